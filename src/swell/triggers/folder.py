"""The files of a watched folder, as plain functions (run in a thread: they block): the folder
opened or made, its matching files with their (size, mtime_ns), their SHA-256, and the event id
of one version of one file."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
from pathlib import Path

from swell.core.errors import ConfigError

__all__ = ["CHUNK", "Version", "event_id", "hash_files", "open_dir", "version_of", "walk"]

CHUNK = 1 << 20
"""Bytes read at a time while hashing."""

Version = tuple[int, int]
"""A file's (size, mtime_ns): what says it changed."""


def open_dir(path: Path) -> Path:
    """The watched directory, absolute, created if missing."""
    root = path.expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"watch path {str(path)!r} is not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"watch path {str(path)!r} cannot be created: "
                          f"{exc.strerror or exc}") from None
    return root


def walk(root: Path, pattern: str, recursive: bool) -> dict[str, Version]:
    """The regular files under ``root`` whose names match ``pattern``, by relative path."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not there")
    found: dict[str, Version] = {}
    for directory, subdirectories, names in os.walk(root):
        if not recursive:
            subdirectories.clear()
        prefix = Path(directory).relative_to(root).as_posix()
        for name in fnmatch.filter(names, pattern):
            version = version_of(Path(directory, name))  # None: gone since listed
            if version is not None:
                found[name if prefix == "." else f"{prefix}/{name}"] = version
    return found


def version_of(path: Path) -> Version | None:
    """A regular file's version, ``None`` if it is gone (or no longer a file)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_size, info.st_mtime_ns) if stat.S_ISREG(info.st_mode) else None


def hash_files(root: Path, todo: list[tuple[str, Version]]) -> dict[str, str | OSError | None]:
    """Per file, its sha256 if it still is at its version after being read, ``None`` if it
    changed, or the error that kept it from being read."""
    out: dict[str, str | OSError | None] = {}
    for rel, version in todo:
        path = root / rel
        digest = hashlib.sha256()
        try:
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
            info = os.stat(path)
        except FileNotFoundError:
            out[rel] = None  # the next look finds it gone
            continue
        except OSError as exc:
            out[rel] = exc
            continue
        out[rel] = digest.hexdigest() if (info.st_size, info.st_mtime_ns) == version else None
    return out


def event_id(rel: str, version: Version, sha256: str) -> str:
    """The same file content at the same version is the same event, stored again or not."""
    size, mtime_ns = version
    return "file-" + hashlib.sha256(f"{rel}\0{size}\0{mtime_ns}\0{sha256}".encode()).hexdigest()[:32]
