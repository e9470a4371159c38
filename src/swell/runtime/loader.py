"""Load an app from ``path/to/file.py``, ``pkg.module`` or ``pkg.module:attribute``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

from swell.core.errors import AppError
from swell.runtime.app import App


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
        raise AppError(f"{name} failed to import: {type(exc).__name__}: {exc}") from exc


def _exec(run: object, module: ModuleType, path: str) -> None:
    try:
        run(module)  # type: ignore[operator]
    except AppError:
        raise
    except Exception as exc:
        raise AppError(f"{path} failed to import: {type(exc).__name__}: {exc}") from exc
