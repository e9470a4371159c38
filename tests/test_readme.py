"""The README stays true: every ```python and ```bash block runs as written.

Section by section (``## ``), each in a directory of its own with the embedded default broker
(``./.swell/swell.db``), in the order the README gives them: a run of python blocks is one script
(a block that goes on from the one before it needs its names), run when a shell block or the end
of the section comes; a python block whose first line names a file (``# shop.py``) is that file,
there for the commands after it, in this section and the later ones. A shell line is run by bash;
one that ends in ``&`` runs in the background (a ``swell run`` is waited for until it is running,
as a reader would) and is stopped with Ctrl-C at the end of its section, which it must survive
with exit code 0. The only lines not run are those in ``NOT_RUN``, each with the reason.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

NOT_RUN = {
    "pip install": "it installs into the environment the tests run in",
    "pytest": "it is the test suite itself",
    "ruff check . && mypy": "CI runs them on every change (.ci/run)",
    "python bench/": "a benchmark takes minutes, and prints rather than asserts",
    "swell run shop.py --broker 'nats://n1:4222": "it needs the three NATS servers it names",
}
"""Shell lines the test does not run (by how they start), and why."""

SERVERS = {"Telemetry and change streams: MQTT, PostgreSQL, SQLite": [("mosquitto", "MQTT_URL")]}
"""Sections whose examples need a server: the fixture that starts one for the tests, and the
variable that gives its URL to the example (which says its default)."""

READY_S = 30.0    # for a background `swell run` to say it is running
COMMAND_S = 120.0  # for one line or one script


@dataclass(frozen=True)
class Block:
    section: str
    lang: str
    text: str
    line: int

    @property
    def file(self) -> str | None:
        """The file a python or toml block is, if its first line names one (``# shop.py``)."""
        first = self.text.splitlines()[0] if self.text else ""
        m = re.fullmatch(r"#\s*([\w./-]+\.(py|toml))\s*", first)
        return m.group(1) if self.lang in ("python", "toml") and m else None

    def commands(self) -> list[str]:
        """A shell block's command lines (``\\`` continuations joined), blank ones left out."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        return [line.strip() for line in joined.splitlines() if line.strip()]


def parse(text: str) -> list[Block]:
    out = []
    section = ""
    fence = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
    heading = re.compile(r"^## (.+)$", re.M)
    headings = [(m.start(), m.group(1)) for m in heading.finditer(text)]
    for m in fence.finditer(text):
        section = next((h for at, h in reversed(headings) if at < m.start()), "")
        out.append(Block(section, m.group(1), m.group(2), text[:m.start()].count("\n") + 1))
    return out


BLOCKS = parse(README.read_text())
PYTHON = [b for b in BLOCKS if b.lang == "python"]
RUN = [b for b in BLOCKS if b.lang in ("python", "bash", "toml")]
SECTIONS = list(dict.fromkeys(b.section for b in RUN))


def test_every_block_is_python_bash_toml_or_plain_text() -> None:
    """A block in another language would not be run: say it is python or bash, a toml file
    (``# pyproject.toml`` first), or plain text (no language: a server's configuration, a
    listing)."""
    assert {b.lang for b in BLOCKS} <= {"python", "bash", "toml", ""}, {b.lang for b in BLOCKS}
    assert all(b.file for b in BLOCKS if b.lang == "toml")


def test_every_toml_block_parses() -> None:
    import tomllib

    for b in (b for b in BLOCKS if b.lang == "toml"):
        tomllib.loads(b.text)


@pytest.mark.parametrize("n", range(len(PYTHON)))
def test_every_python_block_compiles(n: int) -> None:
    compile(PYTHON[n].text, f"README line {PYTHON[n].line}", "exec")


async def test_the_topic_examples_event_matches_its_own_filter() -> None:
    """The event the Topics section sends reaches both of its subscriptions."""
    import json
    import shlex

    from swell.brokers.base import Message
    from swell.brokers.memory import MemoryBroker
    from swell.brokers.producer import Producer
    from swell.runtime.app import declare

    app_block = next(b for b in PYTHON if b.file == "order_events.py")
    (send,) = [shlex.split(c) for b in RUN if b.section == app_block.section and b.lang == "bash"
               for c in b.commands() if c.startswith("swell send")]
    topic, data = send[2], json.loads(send[3])
    subject = send[send.index("--subject") + 1]
    attrs = dict(send[i + 1].split("=", 1) for i, a in enumerate(send) if a == "--attr")
    namespace: dict[str, object] = {"__name__": "order_events"}
    exec(compile(app_block.text, "order_events.py", "exec"), namespace)
    broker = MemoryBroker()
    await declare(namespace["app"], broker)  # type: ignore[arg-type]
    event = Producer(broker, source="/t").event(topic, data, subject=subject, attributes=attrs)

    await broker.publish(topic, [Message(body=event.to_json(), subject=subject)])

    subscriptions = [s.spec.queue.name for t in await broker.topics() for s in t.subscriptions]
    assert len(subscriptions) == 2
    assert [(await broker.stats(q)).depth for q in subscriptions] == [1, 1], subscriptions
    await broker.close()


def _not_run(command: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if command.startswith(start)), None)


def test_every_line_not_run_is_in_the_readme() -> None:
    """Each entry of NOT_RUN still matches a line (else it is stale, and must go)."""
    commands = [c for b in RUN if b.lang == "bash" for c in b.commands()]
    for start in NOT_RUN:
        assert any(c.startswith(start) for c in commands), start


class Reader:
    """Runs one section's blocks as a reader would, in ``cwd``."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("SWELL_") and k not in {"COLUMNS", "LINES"}}
        # no HTTP port unless a command names one: test runs side by side must not take one
        # another's
        self.env["SWELL_HTTP"] = "off"
        self.background: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.script: list[Block] = []

    def write(self, block: Block) -> None:
        assert block.file is not None
        (self.cwd / block.file).parent.mkdir(parents=True, exist_ok=True)
        (self.cwd / block.file).write_text(block.text)

    def _run(self, what: str, args: list[str]) -> None:
        result = subprocess.run(args, cwd=self.cwd, env=self.env, capture_output=True, text=True,
                                timeout=COMMAND_S, check=False)
        assert result.returncode == 0, (f"{what} exited with {result.returncode}\n"
                                        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")

    def python(self, block: Block, *, run: bool = True) -> None:
        """A file is written, and run at once unless a later command runs it (``run``)."""
        if block.file is not None:
            self.flush()
            self.write(block)
            if run:
                self._run(f"python {block.file} (README line {block.line})",
                          [sys.executable, block.file])
        else:
            self.script.append(block)

    def flush(self) -> None:
        """Run the python blocks gathered so far as one script."""
        if not self.script:
            return
        name = f"readme_line_{self.script[0].line}.py"
        (self.cwd / name).write_text("\n\n".join(b.text for b in self.script))
        lines = ", ".join(str(b.line) for b in self.script)
        self.script = []
        self._run(f"the python of README lines {lines}", [sys.executable, name])

    def shell(self, block: Block) -> None:
        self.flush()
        for command in block.commands():
            if _not_run(command):
                continue
            where = f"{command!r} (README block at line {block.line})"
            if re.search(r"&\s*(#.*)?$", command):
                self._start(re.sub(r"&\s*(#.*)?$", "", command), where)
            else:
                self._run(where, ["bash", "-c", command])

    def _start(self, command: str, where: str) -> None:
        log = self.cwd / f"background_{len(self.background)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.cwd, env=self.env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.background.append((where, proc, log))
        if not command.startswith("swell run"):
            return
        deadline = time.monotonic() + READY_S
        while "swell: running" not in log.read_text():
            assert proc.poll() is None, f"{where} ended:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"{where} did not start:\n{log.read_text()}"
            time.sleep(0.05)

    def stop(self) -> None:
        """Ctrl-C to whatever runs in the background; each must stop cleanly."""
        for _, proc, _ in self.background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        failed = []
        for where, proc, log in self.background:
            try:
                code = proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
            if code != 0:
                failed.append(f"{where} exited with {code}:\n{log.read_text()}")
        assert not failed, "\n".join(failed)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("section", SECTIONS)
def test_the_readme_section_runs_as_written(section: str, tmp_path: Path,
                                            request: pytest.FixtureRequest) -> None:
    reader = Reader(tmp_path)
    for fixture, variable in SERVERS.get(section, ()):  # a reader has the server running
        reader.env[variable] = request.getfixturevalue(fixture)
    for block in RUN:  # the files of the sections before: a reader has them by now
        if block.section == section:
            break
        if block.file is not None:
            reader.write(block)
    # a file a command of the section runs (python send.py) is run there, not when written
    later = {m for b in RUN if b.section == section and b.lang == "bash"
             for m in re.findall(r"python\s+([\w./-]+\.py)", b.text)}
    try:
        for block in (b for b in RUN if b.section == section):
            if block.lang == "python":
                reader.python(block, run=block.file not in later)
            elif block.lang == "toml":
                reader.write(block)
            else:
                reader.shell(block)
        reader.flush()
    finally:
        reader.stop()
