"""What every benchmark prints about where it ran: the machine, and the commit measured (the
working tree is shared, so uncommitted changes to src/ are said)."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def machine() -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}")


def source_state() -> str:
    """The commit measured, and whether src/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    changed = [line for line in dirty.splitlines() if line.strip()]
    return head + (f" + {len(changed)} uncommitted change(s) in src/" if changed else " (clean src/)")
