"""Commands that need the app find it without ``--app``: ``SWELL_APP``, or ``app`` (and ``broker``)
in the ``[tool.swell]`` table of the project's ``pyproject.toml``, found from the working
directory upward. ``swell send`` says which event ids it stored."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swell.brokers.sqlite import SqliteBroker
from swell.runtime.loader import load_app

pytestmark = pytest.mark.slow

SHOP = '''
from typing import Any

from swell import App

app = App("shop")
orders = app.queue("orders")
clicks = app.stream("clicks", partitions=2)
checkout = app.saga("checkout")


@checkout.step()
async def reserve(order: dict[str, Any]) -> dict[str, Any]:
    return {"held": order["id"]}


@app.function(orders)
async def charge(order: dict[str, Any]) -> None:
    pass


@app.function(clicks.group("g"))
async def count(click: dict[str, Any]) -> None:
    pass
'''


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items()
           if k not in {"SWELL_APP", "SWELL_BROKER", "COLUMNS", "LINES"}}
    return {**out, "COLUMNS": "200", **extra}


def swell(cwd: Path, *args: str, environ: dict[str, str],
          stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swell", *args], cwd=cwd, env=environ,
                          input=stdin, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project: shop.py and a pyproject.toml that names it and a broker; its folder."""
    (tmp_path / "shop.py").write_text(SHOP)
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "shop"\n\n[tool.swell]\napp = "shop:app"\n'
        'broker = "sqlite:///data/shop.db"\n')
    (tmp_path / "data").mkdir()
    (tmp_path / "src" / "deep").mkdir(parents=True)
    return tmp_path


def queues(db: Path) -> set[str]:
    async def go() -> set[str]:
        broker = SqliteBroker(str(db))
        try:
            return {s.name for s in await broker.queues() if (await broker.stats(s.name)).total}
        finally:
            await broker.close()
    return asyncio.run(go())


def test_send_to_an_undeclared_queue_declares_the_projects_app(project: Path) -> None:
    result = swell(project / "src" / "deep", "send", "orders", '{"id": "o-1"}', environ=env())

    assert result.returncode == 0, result.stderr
    assert "sent 1 event(s) to orders" in result.stderr
    assert queues(project / "data" / "shop.db") == {"orders"}  # the broker of pyproject.toml


def test_swell_app_and_swell_broker_name_them_too(tmp_path: Path) -> None:
    (tmp_path / "shop.py").write_text(SHOP)
    db = tmp_path / "elsewhere.db"

    result = swell(tmp_path, "send", "orders", '{"id": "o-1"}',
                   environ=env(SWELL_APP="shop.py", SWELL_BROKER=f"sqlite:///{db}"))

    assert result.returncode == 0, result.stderr
    assert queues(db) == {"orders"}


def test_the_broker_of_the_project_is_used_by_every_command(project: Path) -> None:
    assert swell(project, "send", "orders", '{"id": "o-1"}', environ=env()).returncode == 0

    listed = swell(project / "src", "queues", environ=env())
    other = swell(project / "src", "queues", environ=env(SWELL_BROKER=f"sqlite:///{project}/x.db"))

    assert listed.returncode == 0, listed.stderr
    assert "orders" in listed.stdout
    assert "no queues yet" in other.stdout  # SWELL_BROKER comes before pyproject.toml


def test_replay_finds_the_app_without_app(project: Path) -> None:
    result = swell(project / "src", "replay", "clicks", "--group", "g", "--from", "1h",
                   environ=env())

    assert result.returncode == 0, result.stderr
    assert "replay" in result.stderr and "0 event(s)" in result.stderr


def test_without_any_app_replay_says_where_to_name_it(tmp_path: Path) -> None:
    result = swell(tmp_path, "replay", "clicks", "--group", "g", "--from", "1h",
                   environ=env(SWELL_BROKER=f"sqlite:///{tmp_path}/s.db"))

    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error:") and "[tool.swell]" in line and "SWELL_APP" in line


def test_a_broken_pyproject_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.swell\napp = 1\n")

    result = swell(tmp_path, "queues", environ=env())

    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error:") and "pyproject.toml" in line


def test_a_saga_override_declares_the_app_when_its_queue_is_not(project: Path) -> None:
    """A saga's log on a broker where its queue is not declared (copied from another one): the
    override needs the queue to send the message that moves the saga on."""
    async def start_elsewhere() -> None:
        app = load_app(str(project / "shop.py"))
        checkout = sys.modules["shop"].checkout
        await checkout.start({"id": "o-1"}, id="o-1", broker=f"sqlite:///{project}/first.db")
        await app.close()
        src, dst = SqliteBroker(f"{project}/first.db"), SqliteBroker(f"{project}/data/shop.db")
        try:
            (entry,) = await src.kv.scan("swell/sagas/")
            await dst.kv.put(entry.key, entry.value)
        finally:
            await src.close()
            await dst.close()

    asyncio.run(start_elsewhere())

    result = swell(project / "src", "saga", "resume", "o-1", environ=env())

    assert result.returncode == 0, result.stderr
    assert "resumed saga checkout/o-1" in result.stdout
    assert "saga.checkout" in queues(project / "data" / "shop.db")


def test_send_prints_the_event_ids(project: Path) -> None:
    one = swell(project, "send", "orders", '{"id": "o-1"}', "--id", "ev-1", environ=env())
    few = swell(project, "send", "orders", "-", environ=env(), stdin='{"n": 1}\n{"n": 2}\n')
    many = swell(project, "send", "orders", "-", environ=env(),
                 stdin="".join(f'{{"n": {i}}}\n' for i in range(100)))

    assert one.returncode == 0, one.stderr
    assert one.stderr.strip() == "sent 1 event(s) to orders: id ev-1"
    assert few.returncode == 0, few.stderr
    ids = few.stderr.strip().split(": ids ")[1].split(", ")
    assert len(ids) == 2 and all(len(i) == 32 for i in ids)
    assert many.returncode == 0, many.stderr
    line = many.stderr.strip()
    assert line.startswith("sent 100 event(s) to orders: ids ")
    assert "(first) ... " in line and line.endswith("(last)")
