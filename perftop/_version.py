"""The single source of perftop's version."""

__version__ = "0.1.0"
