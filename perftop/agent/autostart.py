"""What `perftop run` does inside the program: start the agent, and instrument SQLAlchemy when imported.

The bootstrap `sitecustomize` calls `start_agent()` (from a start-up thread) and `instrument()` (when
the program imports SQLAlchemy). `autostart()` does both at once, for a program that wants the same
behaviour without `perftop run`. SQLAlchemy is never imported here: a post-import hook waits for the
program to import it, so a program without SQLAlchemy pays nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.abc import Loader as _LoaderBase
    from importlib.machinery import ModuleSpec
else:
    _LoaderBase = object

log = logging.getLogger("perftop")

_HOOKED = "sqlalchemy"


def _slow_ms() -> float:
    try:
        return float(os.environ.get("PERFTOP_SLOW_MS", "100"))
    except ValueError:
        return 100.0


def start_agent() -> None:
    """Start the agent, named by PERFTOP_NAME (default: the program's name). Never raises."""
    import perftop

    perftop.start(name=os.environ.get("PERFTOP_NAME") or None)


def instrument() -> None:
    """Instrument every SQLAlchemy Engine, with PERFTOP_SLOW_MS as the slow-query threshold."""
    try:
        import perftop

        perftop.instrument_sqlalchemy(None, slow_ms=_slow_ms())
    except Exception:
        log.warning("perftop: could not instrument SQLAlchemy", exc_info=True)


class _Loader(_LoaderBase):
    """Runs the real loader, then instruments SQLAlchemy; any other attribute is the real loader's."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def create_module(self, spec: ModuleSpec) -> types.ModuleType | None:
        module: types.ModuleType | None = self.real.create_module(spec)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        self.real.exec_module(module)
        instrument()


class _Finder:
    """Notices the first import of SQLAlchemy and wraps its loader; steps aside at once."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> ModuleSpec | None:
        # No import in here: Python calls find_spec holding the global import lock, and an import
        # waiting on a module lock another thread holds would deadlock with it.
        if fullname != _HOOKED or self not in sys.meta_path:
            return None
        sys.meta_path.remove(self)
        for finder in list(sys.meta_path):
            find_spec = getattr(finder, "find_spec", None)
            spec: ModuleSpec | None = find_spec(fullname, path, target) if find_spec is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def autostart() -> None:
    """Start the agent (named by PERFTOP_NAME) and arrange for SQLAlchemy to be instrumented."""
    start_agent()
    if _HOOKED in sys.modules:
        instrument()
    else:
        sys.meta_path.insert(0, _Finder())
