"""Load an app from ``path/to/file.py``, ``pkg.module`` or ``pkg.module:attribute``; find which
app and broker a project means when the command line does not say (``SWELL_APP``, or ``app`` and
``broker`` in the ``[tool.swell]`` table of its ``pyproject.toml``)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import sysconfig
import tomllib
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from swell.core.errors import AppError, ConfigError
from swell.runtime.app import App

log = logging.getLogger("swell.loader")


def load_app(target: str) -> App:
    """The App that ``target`` names; one clear ``AppError`` if there is none."""
    where, _, attr = target.partition(":")
    module = _load_file(where) if where.endswith(".py") or os.sep in where else _load_module(where)
    if attr:
        app = getattr(module, attr, None)
        if not isinstance(app, App):
            raise AppError(f"{target}: {attr!r} is not a swell App")
        return app
    if isinstance(getattr(module, "app", None), App):
        return module.app  # type: ignore[no-any-return]
    apps = [v for v in vars(module).values() if isinstance(v, App)]
    if len(apps) != 1:
        raise AppError(f"{target}: found {len(apps)} swell Apps; name one as {where}:NAME")
    return apps[0]


def _load_file(path: str) -> ModuleType:
    if not os.path.isfile(path):
        raise AppError(f"no such app file: {path}")
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)  # so the app can import its neighbours
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AppError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    _exec(spec.loader.exec_module, module, path)
    return module


def _load_module(name: str) -> ModuleType:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise AppError(f"no module named {name!r}") from exc
        raise AppError(f"{name}: {exc}") from exc
    except AppError:
        raise
    except Exception as exc:
        raise _import_failed(name, exc) from exc


def _exec(run: object, module: ModuleType, path: str) -> None:
    try:
        run(module)  # type: ignore[operator]
    except AppError:
        raise
    except Exception as exc:
        raise _import_failed(path, exc) from exc


def _import_failed(what: str, exc: Exception) -> AppError:
    """The one-line error of an app that raised while importing, naming the line of the app's
    own code where it happened; its whole traceback is logged (at debug: ``--log-level debug``)."""
    log.debug("%s failed to import", what, exc_info=exc)
    where = _own_frame(exc)
    return AppError(f"{what} failed to import: {type(exc).__name__}: {exc}"
                    + (f" (at {where})" if where else ""))


def _own_frame(exc: BaseException) -> str | None:
    """``file:line in function`` of the innermost frame that is not Python's or a library's."""
    skip = tuple({sysconfig.get_path(p) for p in ("stdlib", "platstdlib", "purelib", "platlib")})
    skip += (os.path.dirname(os.path.dirname(__file__)),)  # swell's own (the loader, importlib)
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<") and not f.filename.startswith(skip)]
    if not frames:
        return None
    f = frames[-1]
    return f"{os.path.relpath(f.filename) if f.filename.startswith(os.getcwd()) else f.filename}:" \
           f"{f.lineno} in {f.name}"


# -- which app and broker a project means -----------------------------------------------------
NO_APP = ("pass --app APP, set SWELL_APP, or say where it is in pyproject.toml: "
          '[tool.swell] app = "module:app"')


def project(start: Path | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The folder of the nearest ``pyproject.toml`` from ``start`` (the working directory)
    upward that has a ``[tool.swell]`` table, and that table; ``None`` if there is none."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        file = folder / "pyproject.toml"
        if not file.is_file():
            continue
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{file}: cannot read it: {exc}") from exc
        table = data.get("tool", {}).get("swell")
        if table is None:
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"{file}: [tool.swell] must be a table")
        return folder, table
    return None


def _setting(table: dict[str, Any], folder: Path, name: str) -> str | None:
    value = table.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{folder / 'pyproject.toml'}: [tool.swell] {name} must be a non-empty "
                          f"string, not {value!r}")
    return value.strip()


def find_app(given: str | None = None) -> str | None:
    """What names the app: ``given`` (``--app``), else ``$SWELL_APP``, else ``app`` in the
    project's ``[tool.swell]``; ``None`` if nothing does. A file there is relative to the
    ``pyproject.toml``, and a module is imported from its folder."""
    if given:
        return given
    if os.environ.get("SWELL_APP"):
        return os.environ["SWELL_APP"]
    found = project()
    if found is None:
        return None
    folder, table = found
    app = _setting(table, folder, "app")
    if app is None:
        return None
    where, colon, attr = app.partition(":")
    if where.endswith(".py") or "/" in where or os.sep in where:
        return str((folder / where).resolve()) + colon + attr
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return app


def find_broker() -> str | None:
    """``broker`` in the project's ``[tool.swell]`` (``$SWELL_BROKER`` and ``--broker`` come
    first; the caller sees to those), a relative SQLite path taken from the ``pyproject.toml``'s
    folder; ``None`` if it says nothing."""
    found = project()
    if found is None:
        return None
    folder, table = found
    url = _setting(table, folder, "broker")
    if url is not None and url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        path, query, rest = url[len("sqlite:///"):].partition("?")
        url = f"sqlite:///{folder / path}{query}{rest}"  # folder is absolute: sqlite:////abs
    return url
