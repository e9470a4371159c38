"""The HTTP server of ``swell run``: webhook routes, ``/metrics``, ``/healthz`` and ``/readyz``, on
one port bound to 127.0.0.1 unless told otherwise (see ``swell.web.server``)."""
