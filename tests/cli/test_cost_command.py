"""``swell cost``: each function's cost summed over its nodes' status records, and each workload's
over its functions, readable at 80 columns."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from swell.brokers.url import open_broker
from swell.cli import main
from swell.cli.cost import dollars
from swell.core import keys
from swell.core.cost import Cost
from swell.runtime.cluster import FunctionStatus
from swell.scaling.signals import Observation


def _status(function: str, node: str, cost: Cost | None) -> FunctionStatus:
    return FunctionStatus(
        app="shop", function=function, node=node, queue=function, mode=cost.mode if cost else "inline",
        controller="Auto()", desired=3, share=1, nodes=2, leader=node, decided_at=0.0,
        reason="capped at 3 by budget $2/h (wanted 8: ...)" if function == "charge" else "hold",
        signals={"t": 0.0, "depth": 0, "in_flight": 0}, obs=Observation(t=0.0, depth=0,
                                                                         in_flight=0),
        succeeded=0, dead_lettered=0, cost=cost, at=0.0)


def _feed(url: str) -> None:
    charge = Cost(workload="checkout", mode="inline", unit_s=120.0, invocations=1500,
                  operations=3000, events=1000, dollars=0.25, dollars_per_h=1.5, budget_per_h=2.0)
    report = Cost(workload="checkout", mode="process", unit_s=30.0, invocations=500,
                  operations=1000, events=500, dollars=0.05, dollars_per_h=0.5)
    mail = Cost(workload="notify", mode="inline", unit_s=2.0, invocations=10, operations=20,
                events=10, dollars=0.001, dollars_per_h=0.01)
    records = [_status("charge", "n1", charge), _status("charge", "n2", charge),
               _status("report", "n1", report), _status("mail", "n1", mail),
               _status("old", "n1", None)]

    async def go() -> None:
        broker = open_broker(url)
        try:
            for r in records:
                await broker.kv.put(keys.status(r.app, r.function, r.node),
                                    msgspec.json.encode(r), ttl_s=600)
        finally:
            await broker.close()
    asyncio.run(go())


def test_swell_cost_sums_nodes_and_workloads_at_80_columns(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("SWELL_APP", "SWELL_BROKER"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()
    url = f"sqlite:///{tmp_path / 's.db'}"
    empty = runner.invoke(main, ["cost", "--broker", url])
    assert empty.exit_code == 0 and "no function is running" in empty.output
    _feed(url)
    out = runner.invoke(main, ["cost", "--broker", url], env={"COLUMNS": "80"})
    assert out.exit_code == 0, out.output
    text = out.output
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80, text
    lines = {line.split()[1]: line for line in text.splitlines()
             if line.startswith("│ ") and len(line.split()) > 2}
    # charge on two nodes: 240 unit-s, 3,000 calls, $0.50; $0.50 / 2,000 events = $0.25 per 1k
    assert _cells(lines["charge"])[2:7] == ["240", "3,000", "$0.500", "$0.250", "$3.00"]
    # the workload: charge and report, $0.55 over 2,500 events
    assert _cells(lines["checkout"])[1:7] == ["2", "270", "3,500", "$0.550", "$0.220", "$3.50"]
    assert "notify" in lines and "old" not in lines  # an older swell's record: no cost
    assert "charge: budget $2.00/h, spending $3.00/h, capped at 3 unit(s)" in text


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip("│ ").split("│")]


def test_dollars_read_with_three_significant_digits() -> None:
    assert [dollars(x) for x in (None, 0.0, 0.0000460, 0.001, 0.3379, 12.345, 1234.5)] == [
        "-", "$0", "$0.0000460", "$0.00100", "$0.338", "$12.35", "$1,234"]
