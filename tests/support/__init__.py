"""Helpers the tests share (``tests/`` is on ``sys.path``: ``from support.servers import ...``).

- ``servers``: NATS servers and clusters the tests start themselves, free ports, skip-or-fail
- ``swellprocs``: ``swell run`` processes on one broker, and the sink their app writes
- ``sendcli``: one ``swell send`` runner
- ``eventually``: ``until``, which waits for a condition
- ``running``: a Runtime started for the length of an ``async with`` block
- ``conformance``: the types of the broker conformance suite's fixtures
"""
