"""Observability: metrics the runtime keeps."""
