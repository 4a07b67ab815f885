"""perftop: a live performance monitor for Python services."""

from perftop._version import __version__

__all__ = ["__version__"]
