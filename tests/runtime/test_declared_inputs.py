"""What a user declares is checked when declared: every number (durations, rates, counts), and
every name of a queue, topic, stream or group by one rule that every backend can take; a bad one
is one clear error naming the setting, never a loop that dies later."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from swell import App, Auto, Retry
from swell.core.config import per_second, seconds
from swell.core.errors import AppError, ConfigError, SwellError
from swell.scaling.controllers import AIMD, Fixed, Gradient2, Knative, TargetTracking
from swell.scaling.limiters import RateLimit
from swell.scaling.sim import SimParams

INF, NAN = float("inf"), float("nan")


def _queue(**kw: Any) -> Callable[[], object]:
    return lambda: App("a").queue("q", **kw)


def _wrong(value: object) -> Any:
    """A value of a type the signature refuses, passed on purpose: the check under test is the one
    a caller without a type checker meets."""
    return value


def _fn(**kw: Any) -> Callable[[], object]:
    def declare() -> object:
        app = App("a")
        app.queue("q")
        return app.function("q", **kw)(lambda data: None)
    return declare


BAD: dict[str, Callable[[], object]] = {
    "visibility_timeout inf": _queue(visibility_timeout=INF),
    "visibility_timeout nan": _queue(visibility_timeout=NAN),
    "visibility_timeout 0": _queue(visibility_timeout=0),
    "visibility_timeout huge int": _queue(visibility_timeout=10**400),
    "visibility_timeout 200 years": _queue(visibility_timeout=timedelta(days=200 * 365)),
    "max_message_bytes 0": _queue(max_message_bytes=0),
    "max_message_bytes -1": _queue(max_message_bytes=-1),
    "max_message_bytes 1.5": _queue(max_message_bytes=1.5),
    "max_message_bytes 1 GiB": _queue(max_message_bytes=2**30),
    "max_receives -1": _queue(max_receives=-1),
    "max_receives 2.5": _queue(max_receives=2.5),
    "max_receives True": _queue(max_receives=True),
    "max_receives 2**40": _queue(max_receives=2**40),
    "dedup_window nan": _queue(dedup_window=NAN),
    "dedup_window -1": _queue(dedup_window=-1),
    "topic retention 0": lambda: App("a").topic("t", retention=0),
    "topic max_message_bytes nan": lambda: App("a").topic("t", max_message_bytes=_wrong(NAN)),
    "stream partitions 0": lambda: App("a").stream("s", partitions=0),
    "stream partitions 2.5": lambda: App("a").stream("s", partitions=_wrong(2.5)),
    "stream partitions 100000": lambda: App("a").stream("s", partitions=100_000),
    "stream retention inf": lambda: App("a").stream("s", retention=INF),
    "group checkpoint_every 0": lambda: App("a").stream("s").group("g", checkpoint_every=0),
    "group checkpoint_every 1.5": lambda: App("a").stream("s").group("g", checkpoint_every=_wrong(1.5)),
    "group checkpoint_interval nan": lambda: App("a").stream("s").group("g",
                                                                        checkpoint_interval=NAN),
    "limiter concurrency 1.5": lambda: App("a").limiter("l", concurrency=_wrong(1.5)),
    "limiter rate nan": lambda: App("a").limiter("l", rate=NAN),
    "limiter rate inf": lambda: App("a").limiter("l", rate=INF),
    "function timeout 0": _fn(timeout=0),
    "function timeout nan": _fn(timeout=NAN),
    "function min_instances 1.5": _fn(min_instances=1.5),
    "Auto target_wait nan": lambda: Auto(target_wait=NAN),
    "Auto target_wait inf": lambda: Auto(target_wait=INF),
    "Auto idle nan": lambda: Auto(idle=NAN),
    "Auto max 2.5": lambda: Auto(max=_wrong(2.5)),
    "Auto min True": lambda: Auto(min=True),
    "Retry attempts 1.5": lambda: Retry(attempts=_wrong(1.5)),
    "Retry attempts True": lambda: Retry(attempts=True),
    "Retry backoff nan": lambda: Retry(backoff=NAN),
    "Retry max_backoff inf": lambda: Retry(max_backoff=INF),
    "Retry jitter 'no'": lambda: Retry(jitter=_wrong("no")),
    "RateLimit nan": lambda: RateLimit(NAN),
    "RateLimit inf": lambda: RateLimit(INF),
    "RateLimit burst 2.5": lambda: RateLimit(10, burst=_wrong(2.5)),
    "RateLimit burst nan": lambda: RateLimit(10, burst=_wrong(NAN)),
    "Fixed 1.5": lambda: Fixed(_wrong(1.5)),
    "TargetTracking per_instance 0": lambda: TargetTracking(per_instance=0),
    "TargetTracking sync_s nan": lambda: TargetTracking(sync_s=NAN),
    "Knative target nan": lambda: Knative(target=NAN),
    "Knative utilization 2": lambda: Knative(utilization=2.0),
    "Knative tick_s 0": lambda: Knative(tick_s=0),
    "AIMD backoff 1.5": lambda: AIMD(backoff=1.5),
    "AIMD period_s inf": lambda: AIMD(period_s=INF),
    "Gradient2 smoothing nan": lambda: Gradient2(smoothing=NAN),
    "Gradient2 long_window 0": lambda: Gradient2(long_window=0),
    "SimParams quota inf": lambda: SimParams(quota_rps=INF),
    "SimParams cpu_s nan": lambda: SimParams(cpu_s=NAN),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_number_is_refused_when_declared(case: str) -> None:
    with pytest.raises(SwellError) as info:
        BAD[case]()
    assert isinstance(info.value, ConfigError | AppError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("value", "name"), [
    (INF, "visibility_timeout"), (NAN, "visibility_timeout"), (-1, "max_message_bytes"),
    (0, "max_message_bytes"), (2.5, "max_receives")])
def test_the_error_names_the_setting_and_the_queue(value: float, name: str) -> None:
    with pytest.raises(SwellError) as info:
        App("a").queue("orders", **{name: _wrong(value)})
    assert name in str(info.value) and "'orders'" in str(info.value)


def test_durations_and_rates_refuse_what_is_not_finite() -> None:
    for value in (INF, NAN, -INF, 10**400):
        with pytest.raises(ConfigError):
            seconds(value)
        with pytest.raises(ConfigError):
            per_second(value)
    assert seconds("100d") == 100 * 86400.0
    assert seconds(0) == 0.0
    with pytest.raises(ConfigError, match="above zero"):
        seconds(0, positive=True)


def test_good_declarations_still_pass() -> None:
    app = App("ok")
    app.queue("orders", visibility_timeout="30s", max_receives=0, max_message_bytes=1,
              dedup_window=0)
    app.stream("clicks", partitions=4096, retention=timedelta(days=30)).group("g",
                                                                             checkpoint_every=1)
    app.limiter("api", rate="100/s", burst=20, concurrency=5)
    Auto(min=0, max=1, target_wait="250ms", idle=0)
    Retry(attempts=1, backoff=0, max_backoff="1h")
    Knative(utilization=1.0)
    AIMD(backoff=0.5)


def test_a_retry_far_past_the_doubling_limit_does_not_overflow() -> None:
    # a queue with max_receives=0 never dead-letters: attempts can run into the thousands
    assert Retry(backoff=1, max_backoff=60, jitter=False).delay_s(5000) == 60.0


# -- names ------------------------------------------------------------------------------------
BAD_NAMES = ["it's", 'a"b', "a*b", ".", "a/b", "zürich", "a b", "", "a..b", ".a", "a.", "a>b",
             "x" * 10_000, "q" * 81]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("kind", ["queue", "topic", "stream"])
def test_one_naming_rule_for_queues_topics_and_streams(kind: str, name: str) -> None:
    app = App("names")
    with pytest.raises(AppError) as info:
        getattr(app, kind)(name)
    message = str(info.value)
    assert f"bad {kind} name" in message and len(message) < 300
    assert repr(name[:40]) in message  # quoted, shortened when long
    if len(name) > 40:
        assert f"({len(name):,} characters)" in message


@pytest.mark.parametrize("name", [*BAD_NAMES, "a.b"])
def test_subscription_and_group_names_are_one_segment(name: str) -> None:
    app = App("names")
    with pytest.raises(AppError, match="bad subscription name"):
        app.topic("t").subscribe(name)
    with pytest.raises(AppError, match="bad group name"):
        app.stream("s").group(name)


def test_names_swell_derives_must_fit_too() -> None:
    app = App("names")
    app.queue("q" * 76)  # its dead-letter queue, q...q.dlq, is 80 characters
    with pytest.raises(AppError, match="dead-letter queue"):
        app.queue("q" * 77)
    with pytest.raises(AppError, match="the queue of subscription"):
        app.topic("t" * 60).subscribe("s" * 30)
    with pytest.raises(AppError, match="dead-letter queue of group"):
        app.stream("s" * 60).group("g" * 30)
    with pytest.raises(AppError, match="bad dead-letter queue name"):
        app.queue("r", dead_letter="r/dead")


def test_good_names_pass() -> None:
    app = App("names")
    for name in ("orders", "orders.eu", "A-b_c.D9", "q" * 76):
        app.queue(name)
    app.topic("news.v1").subscribe("billing-2")
    app.stream("clicks.web").group("counts_1")


async def test_the_longest_worst_names_declare_on_nats(nats_server: str) -> None:
    """Whatever the rule lets through, NATS takes, with the longest namespace it allows: '-'
    and '.' are the characters that grow most in a NATS stream's name."""
    from swell.brokers.url import open_broker
    from swell.runtime.app import declare

    app = App("worst")
    app.queue("-" * 76)  # and its dead-letter queue, 80 characters
    app.queue(".".join(["-"] * 38))
    topic = app.topic("-" * 40)
    topic.subscribe("-" * 35)  # its queue: 76 characters, its dead-letter queue 80
    app.stream("-" * 80)
    app.stream("s").group("-" * 74)  # its dead-letter queue: s.<74>.dlq, 80 characters
    namespace = ("w" + uuid.uuid4().hex) * 2
    broker = open_broker(f"{nats_server}?namespace={namespace[:64]}")
    try:
        await declare(app, broker)
        assert {q.name for q in await broker.queues()} >= set(app.queues)
    finally:
        await broker.close()


def test_nan_and_inf_have_no_way_in_through_strings() -> None:
    for text in ("inf", "nan", "1e999", "infs"):
        with pytest.raises(ConfigError):
            seconds(text)
    assert not math.isnan(seconds("0.5s"))
