"""A process-mode app for tests/runtime/test_process_mode.py. The sink (an O_APPEND file) and the
handler's sleep come in the event: instances are forked from a warm parent that outlives a test, so
they do not see environment changes made after it started."""

from __future__ import annotations

import os
import time

from swell import App, Auto

app = App("procs")
jobs = app.queue("jobs", visibility_timeout=5, max_receives=10)


@app.function(jobs, mode="process", concurrency=Auto(max=4, idle=2))
def work(job: dict[str, object]) -> None:
    time.sleep(float(job["sleep"]))  # type: ignore[arg-type]
    fd = os.open(str(job["sink"]), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{job['i']} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
