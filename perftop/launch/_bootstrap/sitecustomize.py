"""perftop's bootstrap, put first on PYTHONPATH by `perftop run`: starts the agent in every Python process.

It makes perftop importable from the package this file ships in (a meta-path finder for that one name,
not that package's site-packages on sys.path, so the app's imports are untouched), then hands over to
any `sitecustomize` the environment already had. Standard library only; never raises into the program.

Start-up cost is what users notice, so only cheap things happen before the program runs: the finder, a
meta-path hook that instruments SQLAlchemy, the web frameworks (request timing by route), Django's ORM and
Celery (task timing) when the program imports them (`PERFTOP_FRAMEWORKS=0`: not the frameworks), `importlib`
and `threading` (before Python 3.13), whose first imports must not race another thread's, and a thread that
imports perftop and starts the agent while the program starts (its socket appears a few tens of milliseconds
later). A fork waits for that thread to finish (bounded), so that a child does not inherit a half-done
import (and, while the thread runs, `os.register_at_fork` keeps that wait first in line); the program's exit
stops the thread at its next import, as the interpreter must not finalize under it.
"""

from __future__ import annotations

import _thread
import atexit
import os
import sys

# The import system's own functions, already loaded: importing `importlib.util` would cost ~9 ms, and no
# import may happen inside a finder's find_spec (Python calls it holding the global import lock, so a
# thread importing there deadlocks against one importing elsewhere).
try:
    from _frozen_importlib import module_from_spec
    from _frozen_importlib_external import spec_from_file_location
except ImportError:  # not CPython
    from importlib.util import module_from_spec, spec_from_file_location

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` costs milliseconds at start-up; only the type checker needs it
    import types
    from collections.abc import Callable, Sequence
    from importlib.abc import Loader as _LoaderBase
    from importlib.machinery import ModuleSpec
    from typing import Any
else:
    _LoaderBase = object

_FORK_WAIT_S = 2.0
"""How long a fork waits for the agent's start-up thread (it holds import locks while it runs)."""
_EXIT_WAIT_S = 2.0
"""How long the program's exit waits for the start-up thread to stop (it stops at its next import)."""

# `_thread`, not `threading`: importing threading alone costs a `python -c pass` 5 to 7 ms (paid before 3.13
# all the same, see `_boot`).
_booting = _thread.allocate_lock()
"""Held while the start-up thread runs."""
_boot_ident: int | None = None
_exiting = False


class _Abort(BaseException):
    """Raised into the start-up thread's next import when the program exits before the agent started:
    a thread still importing while the interpreter finalizes can crash it. A BaseException, so that
    perftop's `except Exception` handlers let it through."""


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""The `perftop` package directory (this file is perftop/launch/_bootstrap/sitecustomize.py)."""


class _PerftopFinder:
    """Makes `perftop` (and only it) importable from this file's package, wherever the app's sys.path
    points. Going through the import system (rather than exec'ing the package by hand) gives the
    start-up thread and the app's own `import perftop` the same module lock: neither sees it half-done."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> ModuleSpec | None:
        if _exiting and _thread.get_ident() == _boot_ident:
            raise _Abort
        if fullname != "perftop":
            return None
        return spec_from_file_location(
            "perftop", os.path.join(_PACKAGE_DIR, "__init__.py"), submodule_search_locations=[_PACKAGE_DIR]
        )


def _warn(what: str, exc: BaseException) -> None:
    try:
        sys.stderr.write(f"perftop: {what} in pid {os.getpid()}: {exc}\n")
    except Exception:
        return


def _start_agent() -> None:
    global _boot_ident
    _boot_ident = _thread.get_ident()
    try:
        if not _exiting:
            from perftop.agent import autostart

            autostart.start_agent()
    except _Abort:
        pass
    except Exception as exc:
        _warn("agent not started", exc)
    finally:
        if _real_register_at_fork is not None and getattr(os, "register_at_fork", None) is _register_at_fork:
            os.register_at_fork = _real_register_at_fork
        _booting.release()


_FRAMEWORK_MODULES = (
    "flask",
    "django.core.handlers.base",
    "django.core.handlers.wsgi",
    "django.core.handlers.asgi",
    "django.db",
    "starlette.applications",
    "bottle",
    "pyramid.router",
    "falcon.app",
    "celery.signals",
    "billiard.pool",
)
"""The modules whose import makes perftop time a web framework's requests, Django's queries or Celery's
tasks
(perftop.agent.frameworks.HOOKS; the agent's own test checks that the two lists agree)."""


def _instrument(name: str, module: types.ModuleType) -> None:
    try:
        if name == "sqlalchemy":
            from perftop.agent import autostart

            autostart.instrument()
        else:
            from perftop.agent import frameworks

            frameworks.instrument_module(name, module)
    except Exception as exc:
        _warn(f"{name} not instrumented", exc)


class _Loader(_LoaderBase):
    """Runs a module's real loader, then instruments the module; any other attribute is the real loader's."""

    def __init__(self, real: Any, name: str, hook: _PostImportHook) -> None:
        self._real = real
        self._name = name
        self._hook = hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def create_module(self, spec: ModuleSpec) -> types.ModuleType | None:
        module: types.ModuleType | None = self._real.create_module(spec)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        self._real.exec_module(module)
        self._hook.seen(self._name)
        _instrument(self._name, module)


class _PostImportHook:
    """A meta-path finder that notices the first import of each watched module (SQLAlchemy, the web
    frameworks), wraps its loader, and steps aside once it has seen them all.

    A name counts as seen when its module runs, not when it is found: `python -m flask` looks the package
    up (runpy's find_spec) before importing it, and that import must still meet the wrapped loader."""

    def __init__(self, names: Sequence[str]) -> None:
        self._names = set(names)

    def seen(self, fullname: str) -> None:
        self._names.discard(fullname)
        if not self._names and self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in self._names or self not in sys.meta_path:
            return None
        for finder in list(sys.meta_path):
            if finder is self:
                continue
            find_spec = getattr(finder, "find_spec", None)
            spec: ModuleSpec | None = find_spec(fullname, path, target) if find_spec is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader, fullname, self)
                return spec
        return None


_real_register_at_fork = getattr(os, "register_at_fork", None)
_late_before_hooks: list[Callable[[], object]] = []
"""Before-fork hooks registered while the start-up thread runs, in order (see `_before_fork`)."""


def _before_fork() -> None:
    """Wait for the start-up thread, then run the before-fork hooks it registered meanwhile.

    Python runs a copy of the before-fork hooks taken when the fork began, but reads the after-fork
    hooks afresh: hooks registered while we wait (logging's lock, the agent's own) would get their
    `after` half without their `before` half. So we run those ourselves, latest first, as Python would.
    """
    if _thread.get_ident() == _boot_ident:
        return
    seen = len(_late_before_hooks)
    if _booting.acquire(timeout=_FORK_WAIT_S):
        _booting.release()
    for hook in reversed(_late_before_hooks[seen:]):
        try:
            hook()
        except Exception:
            continue


def _register_at_fork(**hooks: Any) -> None:
    """`os.register_at_fork` while the start-up thread runs: registers the hooks, then ours again, so
    that ours runs first (before-fork hooks run latest-registered first, and one that takes a lock the
    start-up thread needs, as logging's does, must not run while ours waits for that thread)."""
    assert _real_register_at_fork is not None
    _real_register_at_fork(**hooks)
    before = hooks.get("before")
    if before is not None and _booting.locked():
        _late_before_hooks.append(before)
        _real_register_at_fork(before=_before_fork)


def _at_exit() -> None:
    """Stop the start-up thread (at its next import) and wait for it, before the interpreter finalizes."""
    global _exiting
    _exiting = True
    if _booting.acquire(timeout=_EXIT_WAIT_S):
        _booting.release()


def _after_fork_in_child() -> None:
    global _booting
    _booting = _thread.allocate_lock()  # no start-up thread here: later forks must not wait for one
    if _real_register_at_fork is not None and getattr(os, "register_at_fork", None) is _register_at_fork:
        os.register_at_fork = _real_register_at_fork


def _chain() -> None:
    """Run the next `sitecustomize` on sys.path, as Python would have without us."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if os.path.abspath(entry or ".") == here:
            continue
        for candidate in (
            os.path.join(entry or ".", "sitecustomize.py"),
            os.path.join(entry or ".", "sitecustomize", "__init__.py"),
        ):
            if os.path.isfile(candidate):
                spec = spec_from_file_location("_perftop_chained_sitecustomize", candidate)
                if spec is not None and spec.loader is not None:
                    module = module_from_spec(spec)
                    spec.loader.exec_module(module)
                return


def _boot() -> None:
    if os.environ.get("PERFTOP", "1") != "0":
        try:
            if sys.version_info < (3, 10):  # noqa: UP036 - any Python on this PYTHONPATH runs this file
                raise RuntimeError(f"Python {sys.version.split()[0]} is too old for the agent (3.10+)")
            sys.meta_path.insert(0, _PerftopFinder())
            watched = [] if os.environ.get("PERFTOP_FRAMEWORKS", "1") == "0" else list(_FRAMEWORK_MODULES)
            if "sqlalchemy" in sys.modules:
                _instrument("sqlalchemy", sys.modules["sqlalchemy"])
            else:
                watched.append("sqlalchemy")
            if watched:
                sys.meta_path.insert(0, _PostImportHook(watched))
            # Two first imports that must not race the start-up thread. `importlib`: while its package
            # is half-imported in one thread, `importlib.util` imported in another (runpy does, for -m)
            # makes a second, broken `importlib._bootstrap`, and every later import_module raises
            # "NameError: name 'sys' is not defined" (seen in 1 start of 30). `threading`, before 3.13:
            # it takes the thread that first imports it for the main thread.
            import importlib  # noqa: F401

            if sys.version_info < (3, 13) and "threading" not in sys.modules:
                import threading  # noqa: F401
            if _real_register_at_fork is not None:
                _real_register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
                os.register_at_fork = _register_at_fork
            _booting.acquire()
            try:
                _thread.start_new_thread(_start_agent, ())
            except BaseException:
                _booting.release()
                raise
            atexit.register(_at_exit)
        except Exception as exc:
            _warn("agent not started", exc)
    _chain()


_boot()
