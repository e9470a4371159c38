"""Observability beside the face: Prometheus ``/metrics`` from the snapshots a running Runtime hands
over (``swell.runtime.status.RuntimeSnapshot``), never from its internals."""
