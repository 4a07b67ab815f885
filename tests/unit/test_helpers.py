"""The shared test helpers: the one wait helper's result and timeout message, the socket dir, the port."""

from __future__ import annotations

import itertools
import os
import socket
import time

import pytest

from tests.helpers import free_port, short_tmp_dir, wait_for


def test_wait_for_returns_the_first_truthy_value() -> None:
    seen = iter([0, None, "", "found"])
    assert wait_for(lambda: next(seen), timeout=5.0, interval=0.001) == "found"


def test_wait_for_names_what_it_waited_for_and_the_last_value() -> None:
    with pytest.raises(AssertionError) as failed:
        wait_for(lambda: [], 0.05, "the queue to fill")
    assert str(failed.value) == "timed out after 0.05s waiting for the queue to fill (last value: [])"


def test_wait_for_without_what_quotes_the_predicate_source() -> None:
    empty: dict[str, int] = {}
    with pytest.raises(AssertionError, match=r"waiting for .*empty\.get\(\"key\"\).*\(last value: None\)"):
        wait_for(lambda: empty.get("key"), timeout=0.05)


def test_wait_for_polls_until_the_deadline_at_its_interval() -> None:
    calls: list[float] = []

    def never() -> bool:
        calls.append(time.monotonic())
        return False

    with pytest.raises(AssertionError):
        wait_for(never, timeout=0.3, interval=0.1)
    assert calls[-1] - calls[0] >= 0.3
    assert all(b - a >= 0.1 for a, b in itertools.pairwise(calls))


def test_short_tmp_dir_fits_a_unix_socket_and_is_removed() -> None:
    with short_tmp_dir() as path:
        sock_path = os.path.join(path, "agent-12345678.sock")
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(sock_path)
        assert os.path.exists(sock_path)
    assert not os.path.exists(path)


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)) as server:
        assert server.getsockname()[1] == port


def test_sock_dir_fixture_is_an_empty_private_directory(sock_dir: str) -> None:
    assert os.path.isdir(sock_dir)
    assert os.listdir(sock_dir) == []
    assert os.stat(sock_dir).st_mode & 0o077 == 0
