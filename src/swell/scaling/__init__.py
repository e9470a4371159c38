"""Scaling: signals, controllers that turn them into a desired concurrency, limiters, simulator."""
