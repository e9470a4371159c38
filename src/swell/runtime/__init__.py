"""The runtime: the app registry, Runtime, Dispatchers and the handler's Context."""
