"""Fixtures shared by the test modules: a short socket directory and an exit stack for what a test starts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.helpers import short_tmp_dir


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A private directory for agent sockets, short enough for a Unix socket path, removed after."""
    with short_tmp_dir() as path:
        yield path


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Everything a test starts is stopped here, whatever happens."""
    with ExitStack() as s:
        yield s
