"""The warm parent of process instances, and the one thread that starts and ends their processes.

The warm parent is multiprocessing's forkserver, started once with the app and swell already
imported, so a new instance is a fork of it: a cold start of milliseconds instead of an interpreter
start. ``locate`` names the module an instance imports the app from.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from multiprocessing.process import BaseProcess

from swell.core.errors import AppError
from swell.runtime.app import App, Function

EXIT_WAIT_S = 2.0     # for an instance to exit after its channel closed, before SIGKILL
_WARM_ENV = "SWELL_WARM_PARENT"
_warm_lock = threading.Lock()


_threads: list[ThreadPoolExecutor] = []


def processes() -> ThreadPoolExecutor:
    """The one thread that starts and closes instance processes. ``Process.start()`` blocks (it
    waits for the fork), and it polls every child multiprocessing knows of, so a ``close()`` in
    another thread could pull a process out from under it."""
    if not _threads:
        _threads.append(ThreadPoolExecutor(1, thread_name_prefix="swell-processes"))
    return _threads[0]


def close_process(process: BaseProcess) -> int | None:
    process.join(EXIT_WAIT_S)  # its sentinel said it exited; the exit code may take a moment more
    code = process.exitcode
    if code is not None:
        process.close()
    return code


def describe_exit(code: int | None) -> str:
    if code is None:
        return "closed its channel"
    if code < 0:
        with suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return "exited" if code == 0 else f"exited with code {code}"


def locate(fn: Function) -> str:
    """``module:attribute`` of the App that holds ``fn``, for ``ProcessPool(module=...)``."""
    return _locate(lambda v: isinstance(v, App) and v.functions.get(fn.name) is fn,
                   [fn.handler.fn.__module__], f"the app of function {fn.name!r}")


def locate_app(app: App) -> str:
    """``module:attribute`` naming ``app`` in an imported module."""
    return _locate(lambda v: v is app, [f.handler.fn.__module__ for f in app.functions.values()],
                   f"app {app.name!r}")


def _locate(match: Callable[[object], bool], first: list[str], what: str) -> str:
    # the handlers' module first, __main__ last (an instance runs the main script again to get it)
    names = sorted(dict.fromkeys([*first, *sys.modules]), key=lambda n: n in ("__main__", "__mp_main__"))
    for name in names:
        for attr, value in list(getattr(sys.modules.get(name), "__dict__", {}).items()):
            if match(value):
                return f"{name}:{attr}"
    raise AppError(f"{what} is not a module attribute; process instances import it by name")


def start_warm_parent(module: str) -> None:
    """Start the forkserver, once per process, with swell and ``module`` imported; wait until it forks.

    Python 3.11's forkserver ignores the ``sys.path`` it is handed, so an app outside the default
    path would not be preloaded, and each fork would run the parent's main script again (as
    multiprocessing does), which an instance never needs unless the app lives there. So the pool
    hands the forkserver its setup through the environment, and this module, which the forkserver
    imports first, applies it (``_prepare_warm_parent``).
    """
    from multiprocessing import forkserver, spawn

    with _warm_lock:
        data = spawn.get_preparation_data("swell")
        keep = ("sys_path", "init_main_from_name", "init_main_from_path")
        setup = {k: data[k] for k in keep if k in data} | {"run_main": module == "__main__"}
        os.environ[_WARM_ENV] = json.dumps(setup)
        try:
            forkserver.set_forkserver_preload(["swell.runtime.process", module])
            forkserver.ensure_running()
        finally:
            os.environ.pop(_WARM_ENV, None)
        probe = multiprocessing.get_context("forkserver").Process(target=int, daemon=True)
        probe.start()  # returns once the forkserver has forked: it has imported everything
        probe.join()
        probe.close()


def _prepare_warm_parent() -> None:
    """In the forkserver: take the parent's ``sys.path``, and its main module if the app is there;
    else mark the main module as present, so that no fork runs the main script again."""
    raw = os.environ.pop(_WARM_ENV, None)
    if raw is None:
        return
    from importlib.machinery import ModuleSpec
    from multiprocessing import process, spawn

    setup = json.loads(raw)
    if not setup.pop("run_main"):
        sys.path[:] = setup["sys_path"]
        main = sys.modules["__main__"]
        if "init_main_from_path" in setup:
            main.__file__ = setup["init_main_from_path"]
        if "init_main_from_name" in setup:
            main.__spec__ = ModuleSpec(setup["init_main_from_name"], None)
        return
    current = process.current_process()
    current._inheriting = True  # type: ignore[attr-defined]  # as multiprocessing does for __main__
    try:
        spawn.prepare(setup)
    except Exception:
        traceback.print_exc()  # each instance will run the main script again, and say why it fails
    finally:
        del current._inheriting  # type: ignore[attr-defined]


_prepare_warm_parent()
