"""Brokers: the queue protocol and its backends (memory, sqlite), opened by URL."""
