"""Core types: the event envelope, codec, errors and clock."""
