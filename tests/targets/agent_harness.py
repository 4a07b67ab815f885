"""Helpers for the agent tests: run `agent_target.py` as a real process and talk to it and its socket."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from perftop.wire.protocol import FrameDecoder, Hello, encode
from tests.helpers import ChildLines, close_streams

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(__file__).resolve().parent / "agent_target.py"


def target_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.pop("PERFTOP_SOCKET_DIR", None)
    return env


class Target:
    """One `agent_target.py` process: send it commands, read its answers, kill it at the end."""

    def __init__(
        self, socket_dir: str, name: str = "agent-target", script: Path = TARGET, expect_socket: bool = True
    ) -> None:
        self.socket_dir = socket_dir
        self.proc = subprocess.Popen(
            [sys.executable, str(script), socket_dir, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
            env=target_env(),
        )
        self.children: list[int] = []
        self.output = ChildLines(self.proc, "the target")
        try:
            ready = self.read_line(timeout=20).split()
            assert ready[0] == "ready", ready
            self.pid = int(ready[1])
            self.socket = ready[2]
            if expect_socket:
                assert self.socket != "None", f"the agent did not start: {self.stderr}"
        except BaseException:
            self.kill()
            raise

    @property
    def stderr(self) -> str:
        return self.output.stderr

    def read_line(self, timeout: float = 10.0) -> str:
        return self.output.next(timeout)

    def cmd(self, line: str, timeout: float = 20.0) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.read_line(timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(child, 0)
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        close_streams(self.proc)

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_names(pid: int) -> list[str]:
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/comm") as f:
            names.append(f.read().strip())
    return names


class RawViewer:
    """A viewer speaking the protocol by hand, to send what a well-behaved client never would."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.decoder = FrameDecoder()
        self.pending: list[dict[str, Any]] = []

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(encode(message))

    def hello(self) -> dict[str, Any]:
        """Read the agent's hello and answer with ours."""
        first = self.read()
        assert first is not None and first["type"] == "hello", first
        self.send(Hello(role="viewer", pid=os.getpid()).to_dict())
        return first

    def read(self) -> dict[str, Any] | None:
        """The next message, or None once the agent has closed the connection."""
        while not self.pending:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    def read_all(self) -> list[dict[str, Any]]:
        """Every message until the agent closes the connection."""
        out = []
        while (message := self.read()) is not None:
            out.append(message)
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawViewer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
