"""MQTT intake: QoS 1 messages/s stored by swell's MQTT source on the embedded default (a SQLite
file, a 4-partition stream) against a bare aiomqtt subscriber loop that only counts, in the same run.

    python bench/mqtt.py [--n 20000] [--devices 100] [--repeat 3] [--mode drain|live]

Each run starts its own Mosquitto (``/usr/sbin/mosquitto``) on a free loopback port (no
persistence, no limit on queued or in-flight messages). Per repeat, both subscribers, one after
the other, each a process of its own on a persistent session (MQTT 5, ``clean_start=False``, QoS 1
subscription to ``bench/<run>/+/temp``, made first and left):

- **drain** (default): ``--n`` readings (``{"device", "seq", "temp"}``, ~60 B, from ``--devices``
  devices, QoS 1, each acknowledged by Mosquitto) are published while the subscriber is away and
  wait in its session, as after an outage or a burst; then the subscriber starts. Rate = N / (start
  -> N-th message stored or counted), connecting included.
- **live**: the subscriber runs first; the same readings are published as fast as one publisher
  process can (up to 1,000 in flight); rate = N / (first message -> N-th).

- **swell**: ``MqttSource`` (``client_id`` given, not shared) with its ``Emitter`` onto a stream of
  a ``SqliteBroker`` (WAL, the broker swell run uses), in a process with nothing else: each batch
  of what arrived (up to 500) is appended, then acknowledged (PUBACK) in order.
- **bare**: ``aiomqtt.Client`` with paho acknowledging on arrival, ``async for`` over the
  messages, counting them. Nothing stored.

Target (issue 16): swell >= 0.5x the bare loop. The machine may be shared: the 1-minute load
average before each run is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchinfo import machine, source_state

HERE = Path(__file__).resolve()
MOSQUITTO = "/usr/sbin/mosquitto"
TARGET = 0.5
console = Console(width=80)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_mosquitto(d: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = d / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 0\nmax_inflight_messages 0\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")


# ---------------------------------------------------------------------------------------------
# the publisher and the subscribers (processes of their own)


async def publish(port: int, root: str, n: int, devices: int) -> float:
    """Publish n readings QoS 1, up to 1,000 in flight; seconds taken."""
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5,
                              max_inflight_messages=1000) as client:
        client.pending_calls_threshold = 10**9
        t0 = time.perf_counter()
        for start in range(0, n, 1000):
            await asyncio.gather(*(client.publish(
                f"{root}/d{i % devices}/temp",
                json.dumps({"device": f"d{i % devices}", "seq": i, "temp": 20 + i % 10 / 10}),
                qos=1) for i in range(start, min(start + 1000, n))))
        return time.perf_counter() - t0


async def subscribe_once(port: int, client_id: str, root: str) -> None:
    """Make the persistent session and its subscription, then leave."""
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id, clean_start=False,
                              protocol=aiomqtt.ProtocolVersion.V5, properties=props) as client:
        await client.subscribe(f"{root}/+/temp", qos=1)


async def bare(port: int, client_id: str, n: int) -> dict[str, float]:
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    t0, c0 = time.perf_counter(), time.process_time()
    first = 0.0
    count = 0
    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id, clean_start=False,
                              protocol=aiomqtt.ProtocolVersion.V5, properties=props) as client:
        async for _ in client.messages:
            count += 1
            if count == 1:
                first = time.perf_counter()
            if count >= n:
                break
    return {"start": t0, "first": first, "end": time.perf_counter(), "count": count,
            "cpu": time.process_time() - c0}


async def swell_source(port: int, client_id: str, root: str, n: int,
                       db: str) -> dict[str, float]:
    from swell.brokers.base import StreamSpec
    from swell.brokers.producer import Producer
    from swell.brokers.url import open_broker
    from swell.core.clock import SYSTEM_CLOCK
    from swell.triggers.base import Emitter, SourceEnv
    from swell.triggers.mqtt import MqttSource

    broker = open_broker(f"sqlite:///{db}")
    await broker.declare_stream(StreamSpec(name="telemetry", partitions=4))
    source = MqttSource("bench", url=f"mqtt://127.0.0.1:{port}", topics=[f"{root}/+/temp"],
                        to="telemetry", client_id=client_id, shared=False)
    emitter = Emitter(Producer(broker, source="/bench", streams=["telemetry"]), broker.kv,
                      "telemetry", source.stats, source="/swell/bench/mqtt/bench")
    env = SourceEnv(app="bench", node="bench", emitter=emitter, kv=broker.kv, clock=SYSTEM_CLOCK)
    t0, c0 = time.perf_counter(), time.process_time()
    first = 0.0
    task = asyncio.create_task(source.run(env))
    while source.stats.emitted < n:
        if not first and source.stats.received:
            first = time.perf_counter()
        if task.done():
            task.result()
        await asyncio.sleep(0.001)
    end = time.perf_counter()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    stored = sum(await broker.end_offsets("telemetry"))
    await broker.close()
    return {"start": t0, "first": first, "end": end, "count": stored,
            "cpu": time.process_time() - c0}


# ---------------------------------------------------------------------------------------------
# the runs


@dataclass
class Run:
    target: str
    repeat: int
    n: int
    seconds: float
    count: int
    cpu_s: float
    load1: float

    @property
    def rate(self) -> float:
        return self.n / self.seconds


def one(target: str, repeat: int, port: int, args: argparse.Namespace, d: Path) -> Run:
    root = f"bench/{uuid.uuid4().hex[:8]}"
    client_id = f"bench-{target}-{repeat}"
    load1 = os.getloadavg()[0]
    asyncio.run(subscribe_once(port, client_id, root))
    cmd = [sys.executable, str(HERE), "--sub", target, "--port", str(port), "--client-id",
           client_id, "--root", root, "--n", str(args.n), "--out", str(d / f"{client_id}.json")]
    if args.mode == "drain":
        asyncio.run(publish(port, root, args.n, args.devices))
        subprocess.run(cmd, check=True)
    else:
        sub = subprocess.Popen(cmd)
        time.sleep(1.5)  # its interpreter up and connected (the rate is counted from the first)
        asyncio.run(publish(port, root, args.n, args.devices))
        if sub.wait(120) != 0:
            raise SystemExit(f"{target} subscriber failed")
    res = json.loads((d / f"{client_id}.json").read_text())
    took = res["end"] - (res["start"] if args.mode == "drain" else res["first"])
    run = Run(target, repeat, args.n, took, int(res["count"]), res["cpu"], load1)
    console.log(f"{target} #{repeat}: {run.rate:,.0f} msg/s ({run.count:,} "
                f"{'stored' if target == 'swell' else 'counted'})", highlight=False)
    return run


def table(runs: list[Run], args: argparse.Namespace) -> Table:
    t = Table(title=f"{args.mode}: {args.n:,} QoS 1 readings from {args.devices} devices "
              "(msg/s)", title_justify="left")
    for name in ("#", "swell", "bare", "swell/bare", "stored", "cpu s/b", "load1"):
        t.add_column(name, justify="right")
    for repeat in sorted({r.repeat for r in runs}):
        s, b = (next(r for r in runs if r.repeat == repeat and r.target == k)
                for k in ("swell", "bare"))
        t.add_row(str(repeat), f"{s.rate:,.0f}", f"{b.rate:,.0f}", f"{s.rate / b.rate:.2f}x",
                  f"{s.count:,}", f"{100 * s.cpu_s / (s.n / s.rate):.0f}/"
                  f"{100 * b.cpu_s / (b.n / b.rate):.0f}%", f"{s.load1:.2f}")
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="readings per run (default 20000)")
    p.add_argument("--devices", type=int, default=100, help="devices (default 100)")
    p.add_argument("--repeat", type=int, default=3, help="runs of both (default 3)")
    p.add_argument("--mode", choices=("drain", "live"), default="drain")
    p.add_argument("--sub", choices=("swell", "bare"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--client-id", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.sub:
        if args.sub == "bare":
            res = asyncio.run(bare(args.port, args.client_id, args.n))
        else:
            res = asyncio.run(swell_source(args.port, args.client_id, args.root, args.n,
                                           str(Path(args.out).with_suffix(".db"))))
        Path(args.out).write_text(json.dumps(res))
        return
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    l0 = os.getloadavg()
    console.print(f"swell mqtt bench {started} | {machine()} | swell at {source_state()} | "
                  f"load avg at start {l0[0]:.2f} {l0[1]:.2f} {l0[2]:.2f}", highlight=False)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="swell-mqtt-") as tmp:
        proc, port = start_mosquitto(Path(tmp))
        try:
            for repeat in range(1, args.repeat + 1):
                for target in ("swell", "bare"):
                    runs.append(one(target, repeat, port, args, Path(tmp)))
        finally:
            proc.terminate()
            proc.wait(10)
    console.print(table(runs, args))
    swell = sorted(r.rate for r in runs if r.target == "swell")
    bare_ = sorted(r.rate for r in runs if r.target == "bare")
    ratio = swell[len(swell) // 2] / bare_[len(bare_) // 2]
    lost = [r for r in runs if r.target == "swell" and r.count < r.n]
    ok = ratio >= TARGET and not lost
    console.print(f"{'PASS' if ok else 'FAIL'}  median swell/bare {ratio:.2f}x (target >= "
                  f"{TARGET:g}x); stored >= N in every swell run: {not lost}", highlight=False)
    l1 = os.getloadavg()
    console.print(f"load avg at end {l1[0]:.2f} {l1[1]:.2f} {l1[2]:.2f}", highlight=False)


if __name__ == "__main__":
    main()
