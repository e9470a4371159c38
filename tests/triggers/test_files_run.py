"""A watched folder on a real ``swell run``: files dropped while it runs and while it is stopped
each give one event (the checkpoints in the kv store carry over the restart), and a file written
slowly gives one event once it is complete."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from support.swellprocs import NO_ENV, Swell, wait_for
from swell.core.event import Event

pytestmark = pytest.mark.slow

APP = '''
from swell import App

app = App("inbox")
files = app.queue("files", dedup_window=0)   # no dedup: a file sent twice would show
app.watch("inbox", path="incoming", pattern="*.csv", to=files, settle="1s")


@app.function(app.queue("noop"))
async def noop(data: dict) -> None:
    pass
'''


def drop(folder: Path, names: range) -> None:
    for i in names:
        (folder / f"f{i:04}.csv").write_text(f"id,value\n{i},{i * i}\n")
    (folder / "ignored.txt").write_text("not a csv")


def test_files_while_running_and_while_stopped_each_give_one_event(tmp_path: Path) -> None:
    (tmp_path / "inbox.py").write_text(APP)
    incoming = tmp_path / "incoming"
    swell = Swell(tmp_path)
    try:
        first = swell.start(NO_ENV, app=tmp_path / "inbox.py", grace="5s")
        swell.wait_ready(first)
        wait_for(incoming.is_dir, 10, "the watched folder")
        drop(incoming, range(200))
        wait_for(lambda: len(swell.deliveries("files")) >= 200, 30, "200 events")
        assert swell.terminate(first) == 0
        drop(incoming, range(200, 250))  # while no node runs
        second = swell.start(NO_ENV, app=tmp_path / "inbox.py", grace="5s")
        swell.wait_ready(second)
        wait_for(lambda: len(swell.deliveries("files")) >= 250, 30, "250 events")
        time.sleep(1.0)  # time for a wrong second copy to show
        events = [Event.from_json(d.body) for d in swell.deliveries("files")]
        names = Counter(e.subject for e in events)
        assert len(events) == 250 and set(names.values()) == {1}, names.most_common(3)
        assert set(names) == {f"f{i:04}.csv" for i in range(250)}
        assert swell.terminate(second) == 0
    finally:
        swell.cleanup()


def test_a_file_written_slowly_gives_one_event_once_complete(tmp_path: Path) -> None:
    (tmp_path / "inbox.py").write_text(APP)
    incoming = tmp_path / "incoming"
    swell = Swell(tmp_path)
    try:
        proc = swell.start(NO_ENV, app=tmp_path / "inbox.py", grace="5s")
        swell.wait_ready(proc)
        wait_for(incoming.is_dir, 10, "the watched folder")
        parts = [f"{i},{'x' * 100}\n" for i in range(10)]
        with (incoming / "slow.csv").open("w") as f:
            for part in parts:  # ten parts over 2 s, each well within the 1 s settle time
                f.write(part)
                f.flush()
                time.sleep(0.2)
        wait_for(lambda: swell.deliveries("files"), 10, "the event")
        time.sleep(1.0)
        (event,) = [Event.from_json(d.body) for d in swell.deliveries("files")]
        assert isinstance(event.data, dict)
        assert event.data["size"] == len("".join(parts)) and event.subject == "slow.csv"
        assert swell.terminate(proc) == 0
    finally:
        swell.cleanup()


def test_a_watch_that_cannot_start_stops_swell_run_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "inbox.py").write_text(APP)
    (tmp_path / "incoming").write_text("a file, not a folder")
    swell = Swell(tmp_path)
    try:
        out = swell.refused(tmp_path / "inbox.py")
        assert "'incoming' is not a directory" in out, out
    finally:
        swell.cleanup()
