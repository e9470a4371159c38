"""``app.window`` in one process: bad events are dead-lettered with their reason and the partition
goes on; panes come out once the watermark passes; bad settings fail at declaration; the window's
state shows in the function's status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from support.eventually import until
from swell import App, Event, Producer, Runtime
from swell.brokers.base import Message
from swell.brokers.types import H_ERROR, H_REASON
from swell.core.errors import AppError, ConfigError
from swell.windows import BoundedOutOfOrder, Sum, Tumbling

T0 = 1_800_000_000.0


def field(name: str) -> Any:
    """``event.data[name]``, for ``key=`` and ``time_of=``."""
    def read(e: Event[Any]) -> Any:
        assert e.data is not None
        return e.data[name]

    return read


def app_with_window() -> App:
    app = App("w")
    sales = app.stream("sales", partitions=1)
    app.queue("panes")
    app.window(sales.group("totals", checkpoint_every=5), key=field("shop"),
               window=Tumbling("10s"), aggregate=Sum("amount"),
               watermark=BoundedOutOfOrder("1s"), time_of=field("ts"),
               emit_to="panes", name="totals")
    return app


def message(producer: Producer, data: dict[str, Any], key: str = "a") -> Message:
    return Message(body=producer.event("sales", data, key=key).to_json(), key=key)


async def test_bad_events_are_dead_lettered_and_the_partition_goes_on(tmp_path: Path) -> None:
    app = app_with_window()
    async with Runtime(app, f"sqlite:///{tmp_path / 's.db'}") as rt:
        p = Producer(rt.broker, source="/t")
        good: list[dict[str, Any]] = [{"shop": "a", "amount": 5, "ts": T0 + 1},
                                      {"shop": "a", "amount": 7, "ts": T0 + 2}]
        bad: list[dict[str, Any]] = [
               {"shop": "a", "amount": 1},                       # no time
               {"shop": "a", "amount": 1, "ts": "yesterday"},    # a time that does not parse
               {"amount": 1, "ts": T0 + 3},                      # no key
               {"shop": "a", "amount": "lots", "ts": T0 + 3}]    # the aggregate refuses it
        # and one that moves the watermark past the window's end
        late_good: list[dict[str, Any]] = [{"shop": "a", "amount": 1, "ts": T0 + 30}]
        # (appended with the shop as their key, as a window on shops needs; one is not)
        elsewhere = message(p, {"shop": "b", "amount": 1, "ts": T0 + 4}, key="a")
        await rt.broker.append("sales", [message(p, d) for d in good + bad] + [elsewhere] +
                               [message(p, d) for d in late_good])
        dlq = "sales.totals.dlq"
        await until(lambda: rt.functions["totals"].dispatcher.metrics.finished >= 8)
        dead = await rt.broker.peek(dlq)
        panes = [Event.from_json(d.body) for d in await rt.broker.peek("panes")]
        status = rt.functions["totals"].dispatcher
        window = status.window_status()  # type: ignore[union-attr]
    reasons = sorted(d.headers.get(H_REASON, "") for d in dead)
    assert len(dead) == 5, reasons
    assert reasons.count("bad event") == 3 and reasons.count("aggregate failed") == 1
    assert reasons.count("window key is not the partition key") == 1
    errors = " ".join(d.headers.get(H_ERROR, "") for d in dead)
    assert "yesterday" in errors and "KeyError" in errors and "lots" in errors
    assert "'b'" in errors  # the window key that was not the partition key
    (pane,) = panes
    assert isinstance(pane.data, dict)
    assert (pane.data["key"], pane.data["value"], pane.data["start"]) == ("a", 12, T0 - T0 % 10)
    assert pane.id == pane.data["id"] and pane.type == "swell.window.pane"
    assert window["open_windows"] == 1 and window["watermark"] == T0 + 29


def test_bad_settings_are_one_error_at_declaration() -> None:
    app = App("w")
    group = app.stream("sales").group("g")
    with pytest.raises(ConfigError, match="size"):
        app.window(group, key=lambda e: e, window=Tumbling(0), aggregate=Sum())
    with pytest.raises(ConfigError):
        app.window(group, key=lambda e: e, window=Tumbling("1m"), aggregate=Sum(),
                   allowed_lateness=-1)
    with pytest.raises(AppError, match="late must be"):
        app.window(group, key=lambda e: e, window=Tumbling("1m"), aggregate=Sum(),
                   late="sometimes")  # type: ignore[arg-type]
    with pytest.raises(AppError, match="unknown channel"):
        app.window(group, key=lambda e: e, window=Tumbling("1m"), aggregate=Sum(), emit_to="nowhere")
    with pytest.raises(AppError, match="consumer group"):
        app.window(app.queue("q"), key=lambda e: e, window=Tumbling("1m"),  # type: ignore[arg-type]
                   aggregate=Sum())


def test_a_pane_handler_reads_the_panes_queue() -> None:
    app = App("w")
    counts = app.window(app.stream("clicks").group("g"), key=field("page"),
                        window=Tumbling("1m"), aggregate=Sum())

    @counts
    async def show(pane: dict[str, Any]) -> None:
        pass

    assert app.functions["clicks.g.on_pane"].queue.name == "clicks.g.panes"
    assert msgspec.json.encode(counts.spec.emit_to) == b'"clicks.g.panes"'
