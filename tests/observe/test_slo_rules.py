"""SLOs outside the runtime: the metric families of a snapshot, the Prometheus alerting rules
(loaded, and run on a fault's series, by ``promtool``), and ``swell slo``'s tables at 80 columns."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest

from support.servers import promtool
from swell import SLO, ManualClock, Retry
from swell.brokers.base import Delivery, Receipt
from swell.brokers.memory import MemoryBroker
from swell.brokers.sqlite import SqliteBroker
from swell.cli import main
from swell.core.outcome import Outcome
from swell.core.slo import ALERTS
from swell.observe.prometheus import SwellCollector
from swell.observe.slo import rules_yaml
from swell.runtime.metrics import FunctionMetrics, SloCounter
from swell.runtime.settle import Settle
from swell.runtime.slo import SloSnapshot, read_slos, step
from swell.runtime.status import FunctionSnapshot, RuntimeSnapshot

SLOS = [("shop", "charge", SLO(latency="2s", target=0.99, success=0.999)),
        ("shop", 'odd "name"', SLO(latency=None, success=0.99, window="7d"))]

APP = '''
from swell import SLO, App

app = App("shop")


@app.function(app.queue("orders"), slo=SLO(latency="2s", target=0.99, success=0.999))
async def charge(order: dict) -> None: ...


@app.function(app.queue("refunds"))
async def refund(order: dict) -> None: ...
'''


def check(tmp_path: Path, *args: str) -> str:
    result = subprocess.run([promtool(), *args], cwd=tmp_path, capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_rules_load_in_promtool(tmp_path: Path) -> None:
    rules = rules_yaml(SLOS)
    (tmp_path / "alerts.yaml").write_text(rules)
    assert "SUCCESS: 14 rules found" in check(tmp_path, "check", "rules", "alerts.yaml")
    assert rules.count("alert: SwellSlo") == 3 * 3  # charge: two objectives, odd: one
    assert "> (14.4 * 0.001)" in rules and "> (1 * 0.01)" in rules


UNIT_TEST = """
rule_files: [alerts.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # 100 events a minute: an hour and a half good, ten minutes all bad, then good again
      - series: 'swell_slo_events_total{%(on)s,outcome="good"}'
        values: '0+100x90 9000x9 9100+100x60'
      - series: 'swell_slo_events_total{%(on)s,outcome="bad"}'
        values: '0x90 100+100x9 1000x60'
    alert_rule_test:
      - {eval_time: 85m, alertname: SwellSloSuccessBudgetBurnPage, exp_alerts: []}
      - eval_time: 95m
        alertname: SwellSloSuccessBudgetBurnPage
        exp_alerts: [%(fast)s, %(slow)s]
      - eval_time: 108m
        alertname: SwellSloSuccessBudgetBurnPage
        exp_alerts: [%(slow)s]
      - {eval_time: 140m, alertname: SwellSloSuccessBudgetBurnPage, exp_alerts: []}
"""


@pytest.mark.parametrize("function", ["charge", 'odd "name"\n{{ $labels }}\t\u00e9'])
def test_the_rules_page_on_a_ten_minute_fault_and_clear_after(tmp_path: Path,
                                                              function: str) -> None:
    """promtool runs the rules on the series of a fault from minute 90 to 100: both pages fire
    within it; the 1h/5m one clears once its 5 m window is clean, the 6h/30m one once its 30 m
    window is. A function named with quotes, a newline and template braces is matched and
    labelled as it is named."""
    (tmp_path / "alerts.yaml").write_text(rules_yaml([("shop", function, SLOS[0][2])]))
    name = json.dumps(function)
    labels = f"app: shop, function: {name}, objective: success, severity: page"
    what = "Objective: 0.999 of finished events acked, not dead-lettered, over 28d."
    fast, slow = (
        f'{{exp_labels: {{{labels}, windows: "{a.name}"}}, exp_annotations: {{summary: '
        + json.dumps(f"shop.{function}: success SLO error budget burning over {a.factor:g}x "
                     f"(windows {a.name})")
        + f', description: "{what} At this rate its error budget is gone in {hours} h."}}}}'
        for a, hours in zip(ALERTS[:2], ("46.7", "112"), strict=True))
    (tmp_path / "test.yaml").write_text(UNIT_TEST % {
        "on": f'app="shop",function={name},objective="success"', "fast": fast, "slow": slow})
    check(tmp_path, "test", "rules", "test.yaml")


def test_functions_whose_joined_names_match_get_groups_of_their_own(tmp_path: Path) -> None:
    slo = SLO(latency=None)
    rules = rules_yaml([("a-b", "c", slo), ("a", "b-c", slo), ("a", "b\nc", slo)])
    (tmp_path / "alerts.yaml").write_text(rules)
    assert "SUCCESS: 14 rules found" in check(tmp_path, "check", "rules", "alerts.yaml")
    assert rules.count("  - name: ") == 4


# -- metrics ---------------------------------------------------------------------------------------
def test_slo_metrics_follow_prometheus_naming() -> None:
    clock = ManualClock()
    m = FunctionMetrics()
    m.slo = c = SloCounter(SLO(latency="2s", success=0.999), clock)
    d = Delivery(receipt=Receipt("q", 1, 0), body=b"{}", headers={}, receive_count=1,
                 enqueued_at=clock.time() - 3.0, first_received_at=None)
    rules = Settle(Retry(attempts=1), 1, m)
    rules(Outcome("ok"), 1, delivery=d)
    rules(Outcome("failed", "boom"), 1, delivery=d)

    asyncio.run(step(MemoryBroker(clock=clock).kv, "shop", "charge", c))
    fn = FunctionSnapshot(name="charge", queue="orders", mode="inline", desired=1, reason="r",
                          share=1, in_flight=0, succeeded=1, dead_lettered=1, signals=None,
                          slo=SloSnapshot(c.slo, c.counts(), c.report))
    registry = CollectorRegistry()
    registry.register(SwellCollector(lambda: RuntimeSnapshot("shop", "n1", (fn,))))
    out = generate_latest(registry).decode()
    on = 'app="shop",function="charge"'
    assert f'swell_slo_events_total{{{on},objective="success",outcome="bad"}} 1.0' in out
    assert f'swell_slo_events_total{{{on},objective="latency",outcome="bad"}} 1.0' in out
    assert "# TYPE swell_slo_events_total counter" in out
    samples = dict(line.rsplit(" ", 1) for line in out.splitlines() if not line.startswith("#"))
    burn = samples[f'swell_slo_burn_rate{{{on},objective="success",window="5m"}}']
    assert float(burn) == pytest.approx(500.0)  # half failing, against a budget of 0.1 %
    left = samples[f'swell_slo_error_budget_remaining_ratio{{{on},objective="success"}}']
    assert float(left) == 0.0  # spent, 499 times over (a ratio stays in 0..1)
    assert (f'swell_slo_alert_firing{{{on},objective="success",severity="page",windows="1h/5m"}}'
            " 1.0") in out
    assert f'swell_slo_latency_threshold_seconds{{{on}}} 2.0' in out
    assert f'swell_slo_objective_ratio{{{on},objective="success"}} 0.999' in out


# -- the command -------------------------------------------------------------------------------
def feed(db: Path) -> None:
    """Counts of one node for ``shop.charge``, as a runtime flushes them."""
    async def go() -> None:
        broker = SqliteBroker(str(db))
        try:
            m = FunctionMetrics()
            m.slo = c = SloCounter(SLOS[0][2], ManualClock(time.time()))
            rules = Settle(Retry(attempts=1), 1, m)
            d = Delivery(receipt=Receipt("q", 1, 0), body=b"{}", headers={}, receive_count=1,
                         enqueued_at=c.clock.time(), first_received_at=None)
            for i in range(500):
                rules(Outcome("failed" if i % 50 == 0 else "ok"), 1, delivery=d)
            await step(broker.kv, "shop", "charge", c)
            assert await read_slos(broker, now=c.clock.time())
        finally:
            await broker.close()
    asyncio.run(go())


def test_swell_slo_reads_at_80_columns_and_prints_rules(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    for name in ("SWELL_APP", "SWELL_BROKER", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)
    url = f"sqlite:///{tmp_path / 's.db'}"
    empty = runner.invoke(main, ["slo", "--broker", url])
    assert empty.exit_code == 0 and "no function with an SLO" in empty.output
    feed(tmp_path / "s.db")
    out = runner.invoke(main, ["slo", "--broker", url], env={"COLUMNS": "80"})
    assert out.exit_code == 0, out.output
    text = out.output
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80, text
    assert "┃ function    ┃ objective  ┃" in text  # a table: it fits
    for word in ("shop.charge", "latency 2s", "│ success    │ 99.9% 28d │  98% │ -1900% │ "
                 "1h/5m 6h/30m 3d/6h │", "20.0x"):
        assert word in text, (word, text)

    (tmp_path / "shop.py").write_text(APP)
    from_app = runner.invoke(main, ["slo", "rules", "shop.py"])
    assert from_app.exit_code == 0, from_app.output
    from_broker = runner.invoke(main, ["slo", "rules", "--broker", url])
    assert from_broker.output == from_app.output
    assert from_app.output.startswith("# Generated by `swell slo rules`")
    (tmp_path / "none.py").write_text(APP.split("@app.function")[0])
    refused = runner.invoke(main, ["slo", "rules", "none.py"])
    assert refused.exit_code == 1 and "declares an SLO" in refused.output
