"""The file-drop trigger: ``app.watch("inbox", path="./incoming", pattern="*.csv", to=...)`` puts an
event on a channel for each file created or changed in a directory, once it stopped growing.

What was emitted is checkpointed in the kv store, one key per file (``keys.files``), *after* the
events are stored: a restart compares the directory with the checkpoints, so a file that arrived
while swell was down is emitted and one already emitted is not (at least once: a crash between
the two emits a file again, with the same event id, which the channel drops inside its dedup
window). A file touched without a change of content is not emitted again; a file deleted loses
its checkpoint, so one created again under the same name is new. Changes come from ``watchfiles``
(inotify and its kin), and from a full scan at start and every ``RESCAN_S`` seconds, which
catches what a watcher can miss (an overflowing event queue, a network file system)."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import logging
import math
import os
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from swell.core import keys
from swell.core.config import Duration, seconds
from swell.core.errors import ConfigError, MissingDependency, SwellError
from swell.core.event import Event
from swell.triggers.base import SourceEnv, SourceStats, unbroken
from swell.triggers.folder import Version, event_id, hash_files, open_dir, version_of, walk

__all__ = ["Checkpoint", "WatchSource"]

log = logging.getLogger("swell.triggers.files")

BATCH = 100
"""Events stored per broker call."""
RESCAN_S = 60.0
"""How often the whole directory is scanned again, besides the watcher's notifications."""
MAX_BACKOFF_S = 30.0
"""The longest wait before trying again to store after the broker failed."""


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A file a watch source emitted, as kept in the kv store."""

    path: str
    """Relative to the watched directory, ``/``-separated."""
    size: int
    mtime_ns: int
    sha256: str
    event_id: str

    @property
    def version(self) -> Version:
        return (self.size, self.mtime_ns)


@dataclass
class _Pending:
    """A file seen and not yet stored, waiting for its version to hold still for ``settle``:
    when (monotonic) it last changed and was first seen, and its hash at ``version`` once read."""

    version: Version
    changed_at: float
    seen_at: float
    sha256: str | None = None


class WatchSource:
    """Emits an event for each file matching ``pattern`` (an ``fnmatch`` pattern on the file's
    name) created or changed under ``path`` (and its subdirectories with ``recursive``), once its
    size and mtime have not changed for ``settle``. The event's data is ``{"path", "name",
    "size", "mtime", "sha256"}`` (``name`` relative to ``path``, also the event's subject); its id
    is derived from the name, size, mtime and hash, so the same file stored twice is one event.

    ``path`` need not exist when declared: it is created when the source starts."""

    kind: ClassVar[str] = "files"

    def __init__(self, name: str, *, path: str | Path, to: str, pattern: str = "*",
                 recursive: bool = False, settle: Duration = "1s") -> None:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"watch {name!r}: pattern must be a non-empty file-name pattern "
                              f"such as '*.csv', got {pattern!r}")
        if "/" in pattern or os.sep in pattern:
            raise ConfigError(f"watch {name!r}: pattern {pattern!r} matches file names, not paths "
                              "(use recursive=True to watch subdirectories)")
        if not str(path):
            raise ConfigError(f"watch {name!r}: path must name a directory")
        self.name = name
        self.target = to
        self.path = Path(path)
        self.pattern = pattern
        self.recursive = recursive
        self.settle_s = seconds(settle, name=f"watch {name!r} settle", positive=True)
        self._poll_s = min(max(self.settle_s / 4, 0.02), 1.0)
        self.stats = SourceStats()
        self._pending: dict[str, _Pending] = {}
        self._seen: dict[str, Checkpoint] = {}
        self._dirty: set[str] = set()
        self._failed: dict[str, Version] = {}
        self._root = self.path
        self._prefix = ""
        self._rescan_at = 0.0
        self._retry_at = 0.0
        self._backoff_s = 0.0
        self._stopping = False
        self._watch_stop = asyncio.Event()

    def detail(self) -> dict[str, Any]:
        return {"path": str(self.path), "pattern": self.pattern, "pending": len(self._pending)}

    async def prepare(self) -> None:
        """Before the app runs: watchfiles is there, and the folder is (or is made) one; else one
        clear error stops ``swell run``."""
        try:
            import watchfiles  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise MissingDependency("watchfiles", "files") from exc
        self._root = await asyncio.to_thread(open_dir, self.path)

    async def run(self, env: SourceEnv) -> None:
        """Scan, then watch and emit until cancelled."""
        from watchfiles import awatch

        await self.prepare()
        await self._load(env)
        self._stopping = False
        self._rescan_at = math.inf  # the first scan waits for the watcher: it misses nothing
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._watch(awatch))
            try:
                while True:
                    await self._tick(env)
                    await env.clock.sleep(self._poll_s)
            finally:
                # the watcher's thread returns within a step once this is set: cancelling the
                # task alone would wait for its timeout
                self._stopping = True
                self._watch_stop.set()

    # -- the kv checkpoints ----------------------------------------------------------------------
    def _key(self, rel: str) -> str:
        return self._prefix + hashlib.sha256(rel.encode()).hexdigest()[:32]

    async def _load(self, env: SourceEnv) -> None:
        """Read the checkpoints, trying again while the kv store cannot answer."""
        # this machine's folder: nodes on one machine (or one network folder seen by the same
        # path on one host) share checkpoints; another machine's folder has its own
        site = hashlib.sha256(f"{socket.gethostname()}:{self._root}".encode()).hexdigest()[:16]
        self._prefix = f"{keys.files(env.app, self.name)}{site}/"
        while True:
            try:
                entries = await env.kv.scan(self._prefix)
                break
            except SwellError as exc:
                self._failure("reading checkpoints", exc)
                await env.clock.sleep(self._next_backoff())
        self._backoff_s = 0.0
        for entry in entries:
            try:
                mark = msgspec.json.decode(entry.value, type=Checkpoint)
            except msgspec.DecodeError:
                log.warning("watch %s: ignoring an unreadable checkpoint %s", self.name, entry.key)
                continue
            self._seen[mark.path] = mark

    async def _forget(self, env: SourceEnv, gone: Iterable[str]) -> None:
        """Drop files that are gone from the pending ones and their checkpoints (a file created
        again under the same name is new)."""
        for rel in gone:
            self._pending.pop(rel, None)
            self._failed.pop(rel, None)
            if rel in self._seen:
                try:
                    await env.kv.delete(self._key(rel))
                except SwellError as exc:  # the next scan tries again
                    self._failure("deleting a checkpoint", exc)
                    continue
                del self._seen[rel]

    # -- what changed --------------------------------------------------------------------------
    async def _watch(self, awatch: Any) -> None:
        """Note the paths the watcher reports. Each time it starts, a scan follows once it is
        registered, so nothing made meanwhile is missed; one that ends or fails starts again."""
        debounce_ms = int(min(max(self.settle_s * 250, 50), 1600))
        pause_s = 0.0
        while not self._stopping:
            self._watch_stop = asyncio.Event()
            changes = awatch(self._root, stop_event=self._watch_stop, debounce=debounce_ms,
                             step=min(50, debounce_ms), recursive=self.recursive,
                             watch_filter=None)
            step = asyncio.ensure_future(anext(changes))
            try:
                await asyncio.sleep(0)  # its first step registers the watch, then waits
                self._rescan_at = 0.0
                while True:
                    got = await step  # before naming the set: a tick swaps it meanwhile
                    self._dirty.update(path for _, path in got)
                    step = asyncio.ensure_future(anext(changes))
            except StopAsyncIteration:  # stopped, to watch a directory made again
                pause_s = 0.0
            except Exception as exc:  # the directory missing, or no more inotify watches
                self._failure("watching", exc)
                pause_s = min(max(pause_s * 2, 0.1), MAX_BACKOFF_S)
            finally:
                step.cancel()  # if this task is cancelled before it awaits the step
            self._rescan_at = 0.0
            await asyncio.sleep(pause_s)

    async def _tick(self, env: SourceEnv) -> None:
        now = env.clock.monotonic()
        if now >= self._rescan_at:
            self._dirty.clear()  # the scan sees them all
            # a directory that was missing is scanned again soon, once its watcher is back
            ok = await self._scan(env, now)
            self._rescan_at = now + (RESCAN_S if ok else 2 * min(self.settle_s, 1.0))
        elif self._dirty:
            dirty, self._dirty = self._dirty, set()
            await self._look(env, dirty, now)
        await self._settle(env, now)
        now = env.clock.monotonic()
        self.stats.pending = len(self._pending)
        self.stats.lag_s = max((now - p.seen_at for p in self._pending.values()), default=0.0)

    async def _scan(self, env: SourceEnv, now: float) -> bool:
        """Compare the whole directory with what is known; ``False`` if it could not be read."""
        try:
            found = await asyncio.to_thread(walk, self._root, self.pattern, self.recursive)
        except OSError as exc:
            # the directory removed: made again (keeping the checkpoints) for files to come
            self._failure("scanning", exc)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self._root.mkdir, parents=True, exist_ok=True)
                self._watch_stop.set()  # watch the new directory
            return False
        await self._forget(env, {*self._seen, *self._pending} - found.keys())
        for rel, version in found.items():
            self._note(rel, version, now)
        return True

    async def _look(self, env: SourceEnv, paths: set[str], now: float) -> None:
        """Look at the paths the watcher reported (whatever it said: a path deleted and created
        again in one batch is reported as both)."""
        found, gone = await asyncio.to_thread(self._stat_paths, paths)
        for rel, version in found.items():
            self._note(rel, version, now)
        if "." in gone:  # the directory itself: the scan makes it again
            self._rescan_at = 0.0
        # a file went, or a whole directory with everything known under it
        known = {*self._seen, *self._pending}
        under = tuple(f"{rel}/" for rel in gone if rel not in known and rel != ".")
        await self._forget(env, [rel for rel in gone if rel in known]
                           + ([rel for rel in known if rel.startswith(under)] if under else []))

    def _stat_paths(self, paths: set[str]) -> tuple[dict[str, Version], list[str]]:
        found: dict[str, Version] = {}
        gone: list[str] = []
        for path in paths:
            try:
                rel = Path(path).relative_to(self._root).as_posix()
            except ValueError:  # not under the directory
                continue
            try:
                info = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                gone.append(rel)
                continue
            except OSError:
                continue
            if rel == ".":  # the directory itself: its files are reported one by one
                continue
            if stat.S_ISDIR(info.st_mode) and self.recursive:
                # a directory moved in, with its files
                with contextlib.suppress(OSError):
                    found.update({f"{rel}/{r}": v for r, v in
                                  walk(Path(path), self.pattern, True).items()})
            elif (stat.S_ISREG(info.st_mode) and fnmatch.fnmatch(Path(rel).name, self.pattern)
                  and (self.recursive or "/" not in rel)):
                found[rel] = (info.st_size, info.st_mtime_ns)
        return found, gone

    def _note(self, rel: str, version: Version, now: float) -> None:
        """A file seen at ``version``: pending unless that version is checkpointed (or could
        not be read)."""
        pending = self._pending.get(rel)
        if pending is not None:
            if pending.version != version:
                pending.version, pending.changed_at, pending.sha256 = version, now, None
            return
        mark = self._seen.get(rel)
        if (mark is not None and mark.version == version) or self._failed.get(rel) == version:
            return
        self._failed.pop(rel, None)
        self._pending[rel] = _Pending(version, now, now)
        self.stats.received += 1

    # -- settling and storing ------------------------------------------------------------------
    async def _settle(self, env: SourceEnv, now: float) -> None:
        """Check the pending files' versions; hash those that held still for ``settle`` and
        store their events."""
        if not self._pending:
            return
        rels = list(self._pending)
        versions = await asyncio.to_thread(lambda: {rel: version_of(self._root / rel) for rel in rels})
        await self._forget(env, [rel for rel, version in versions.items() if version is None])
        for rel, version in versions.items():
            if version is not None:
                self._note(rel, version, now)
        ready = sorted((rel for rel, p in self._pending.items()
                        if now - p.changed_at >= self.settle_s),
                       key=lambda rel: (self._pending[rel].version[1], rel))
        if not ready or now < self._retry_at:
            return
        for start in range(0, len(ready), BATCH):
            if not await self._store(env, ready[start:start + BATCH], now):
                return

    async def _store(self, env: SourceEnv, batch: list[str], now: float) -> bool:
        """Hash, emit and checkpoint ``batch``; ``False`` if the broker failed (they stay
        pending, to be tried again after a backoff)."""
        marks = await self._hash(env, batch, now)
        fresh = [m for m in marks
                 if (old := self._seen.get(m.path)) is None or old.sha256 != m.sha256]

        async def emit_and_checkpoint() -> None:
            if fresh:
                await env.emitter.emit([self._event(env, m) for m in fresh])
            for mark in marks:  # after the events are stored: at least once
                await env.kv.put(self._key(mark.path), msgspec.json.encode(mark))
                self._seen[mark.path] = mark
                self._pending.pop(mark.path, None)

        try:
            await unbroken(emit_and_checkpoint())
        except SwellError as exc:
            self._failure("storing", exc)
            self._retry_at = env.clock.monotonic() + self._next_backoff()
            return False
        self.stats.duplicates += len(marks) - len(fresh)  # touched, content unchanged
        self._backoff_s = 0.0
        return True

    async def _hash(self, env: SourceEnv, batch: list[str], now: float) -> list[Checkpoint]:
        """Checkpoints for the files of ``batch`` whose content could be read at their settled
        version; a file that changed meanwhile waits again, one that cannot be read is dropped
        until it changes."""
        todo = [(rel, self._pending[rel].version) for rel in batch
                if self._pending[rel].sha256 is None]
        hashed = await asyncio.to_thread(hash_files, self._root, todo)
        for rel, result in hashed.items():
            pending = self._pending[rel]
            if isinstance(result, str):
                pending.sha256 = result
            elif result is None:
                pending.changed_at = now  # it moved on while being read
            else:
                log.warning("watch %s: cannot read %s: %s", self.name, rel, result)
                self.stats.rejected["unreadable"] = self.stats.rejected.get("unreadable", 0) + 1
                self._failed[rel] = pending.version
                del self._pending[rel]
        return [Checkpoint(path=rel, size=p.version[0], mtime_ns=p.version[1], sha256=p.sha256,
                           event_id=event_id(rel, p.version, p.sha256))
                for rel in batch if (p := self._pending.get(rel)) is not None and p.sha256]

    def _event(self, env: SourceEnv, mark: Checkpoint) -> Event[Any]:
        mtime = datetime.fromtimestamp(mark.mtime_ns / 1e9, UTC)
        data = {"path": str(self._root / mark.path), "name": mark.path, "size": mark.size,
                "mtime": mtime.isoformat(), "sha256": mark.sha256}
        return env.emitter.event(data, id=mark.event_id, subject=mark.path, key=mark.path,
                                 time=mtime)

    # -- failures ------------------------------------------------------------------------------
    def _failure(self, doing: str, exc: BaseException) -> None:
        self.stats.errors += 1
        self.stats.last_error = f"{doing}: {exc}"
        log.warning("watch %s: %s failed (will retry): %s", self.name, doing, exc)

    def _next_backoff(self) -> float:
        self._backoff_s = min(max(self._backoff_s * 2, self.settle_s), MAX_BACKOFF_S)
        return self._backoff_s


# -- the file system (called in threads) ---------------------------------------------------------
