"""What `perftop run` does inside the program: start the agent, and instrument SQLAlchemy when imported.

SQLAlchemy is not imported here: a post-import hook waits for the program to import it (most programs
that use it do so early), so a program without SQLAlchemy pays nothing and starts as fast as before.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import types
from collections.abc import Sequence

log = logging.getLogger("perftop")

_HOOKED = "sqlalchemy"


def _slow_ms() -> float:
    try:
        return float(os.environ.get("PERFTOP_SLOW_MS", "100"))
    except ValueError:
        return 100.0


def _instrument() -> None:
    try:
        import perftop

        perftop.instrument_sqlalchemy(None, slow_ms=_slow_ms())
    except Exception:
        log.warning("perftop: could not instrument SQLAlchemy", exc_info=True)


class _Loader(importlib.abc.Loader):
    """Runs the real loader, then instruments SQLAlchemy."""

    def __init__(self, real: importlib.abc.Loader) -> None:
        self.real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.real.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self.real.exec_module(module)
        _instrument()


class _Finder(importlib.abc.MetaPathFinder):
    """Notices the first import of SQLAlchemy and wraps its loader; then steps aside."""

    def __init__(self) -> None:
        self._busy = False

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _HOOKED or self._busy:
            return None
        self._busy = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False
        if spec is None or spec.loader is None:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec.loader = _Loader(spec.loader)
        return spec


def autostart() -> None:
    """Start the agent (named by PERFTOP_NAME) and arrange for SQLAlchemy to be instrumented."""
    import perftop

    perftop.start(name=os.environ.get("PERFTOP_NAME") or None)
    if _HOOKED in sys.modules:
        _instrument()
    else:
        sys.meta_path.insert(0, _Finder())
