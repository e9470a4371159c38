"""Patterns over the brokers: idempotency, dedup sinks, the outbox and its relay, sagas, replays."""
