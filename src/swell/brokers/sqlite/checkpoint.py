"""The WAL copied back into the database file, off the broker's thread."""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("swell.sqlite")


class Checkpointer:
    """Copies the WAL back into the database file, from a thread and connection of its own.

    SQLite would otherwise do it in whichever commit takes the WAL past 1,000 pages: that commit
    then copies them and waits for fsync, 3 to 100 ms on the benchmark's box, holding the broker's
    one thread (at a steady 1,000 events/s these were the slowest events). A passive checkpoint
    waits for no reader or writer. But while writes never pause, the WAL cannot start over from
    its beginning, so past ``RESTART_FRAMES`` a restarting checkpoint holds writers back for a
    moment (most pages are copied by then) to keep the file's size bounded."""

    PERIOD_S = 0.1
    RESTART_FRAMES = 4000  # 16 MiB of 4 KiB pages

    def __init__(self, path: str, synchronous: str) -> None:
        self._path = path
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        self._conn.execute("PRAGMA busy_timeout = 1000")  # a restart waits this long for writers
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="swell-sqlite-checkpoint",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stopping.wait(self.PERIOD_S):
                try:
                    self._checkpoint()
                except sqlite3.Error as exc:  # a disk error, say: try again next time
                    log.warning("checkpoint of %s failed: %s", self._path, exc)
        finally:
            self._conn.close()

    def _checkpoint(self) -> None:
        _, frames, _ = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames > self.RESTART_FRAMES:
            self._conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()
