"""The house rules of ``src/swell`` that a linter does not check by itself: the layers (through
import-linter's contract in pyproject.toml), no private name imported across modules, and modules
of a readable size."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "swell"
MAX_LINES = 450
#: modules allowed past MAX_LINES, each with its reason (the closing notes say more)
LONGER: dict[str, str] = {}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_layers_hold() -> None:
    # core < brokers < patterns, scaling < runtime < observe < cli: see [tool.importlinter]
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None, "lint-imports (import-linter, in the dev extra) is not installed"
    done = subprocess.run([exe], cwd=SRC.parent, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_private_name_is_imported_from_another_module(path: Path) -> None:
    here = module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("swell"):
            found += [f"line {node.lineno}: from {node.module} import {a.name}"
                      for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")
                      and node.module != here]
    assert not found, "\n".join(found)


def test_modules_stay_readable() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert set(long) <= set(LONGER), f"over {MAX_LINES} lines: {long}"
