"""The ``swell`` command: thin — each command parses, calls the read side (``runtime.status``),
the runtime or a client, and renders (``swell.render``)."""

from __future__ import annotations

import click

from swell.cli.channels import queues, streams, topics
from swell.cli.cost import cost
from swell.cli.dlq import dlq
from swell.cli.replay import replay
from swell.cli.run import demo, run
from swell.cli.sagas import saga
from swell.cli.schedules import schedules
from swell.cli.send import send
from swell.cli.sim import sim
from swell.cli.slo import slo
from swell.cli.status import nodes, status

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="swell")
def main() -> None:
    """swell: event-driven functions that scale on signals."""


for _command in (run, send, queues, topics, streams, replay, status, nodes, schedules, dlq, saga,
                 demo, sim, cost, slo):
    main.add_command(_command)
