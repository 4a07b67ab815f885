"""Drive a program in a real terminal: tmux on a private server socket, send-keys and capture-pane."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path


class Tmux:
    """One detached tmux session running `command` at a fixed size; its exit code lands in a file."""

    def __init__(self, command: list[str], tmp: Path, width: int = 100, height: int = 30) -> None:
        if shutil.which("tmux") is None:
            raise RuntimeError("tmux is not installed (apt-get install tmux)")
        self.server = f"perftop-test-{uuid.uuid4().hex[:8]}"
        self.session = "t"
        self.rc_file = tmp / "rc"
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in _passthrough_env().items())
        # COLUMNS and LINES, where the environment has them, would override the terminal's real size.
        inner = (
            f"cd {shlex.quote(os.getcwd())} && env -u COLUMNS -u LINES {env} {shlex.join(command)};"
            f" echo $? > {self.rc_file}"
        )
        self._tmux(
            "new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height), "sh", "-c", inner
        )

    def _tmux(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-L", self.server, *args], capture_output=True, text=True, timeout=30, check=False
        )
        return out.stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", self.session)

    def send(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", self.session, *keys)

    def wait_screen(self, predicate: Callable[[str], bool], timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"screen never matched within {timeout}s; last screen:\n{text}")

    def wait_exit(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.rc_file.exists() and self.rc_file.read_text().strip():
                return int(self.rc_file.read_text())
            time.sleep(0.1)
        raise AssertionError(f"program did not exit within {timeout}s; screen:\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True, check=False)


def _passthrough_env() -> dict[str, str]:
    keep = {"PATH", "HOME", "PYTHONPATH", "PERFTOP_SOCKET_DIR", "XDG_RUNTIME_DIR", "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["TERM"] = "xterm-256color"
    env["COLORTERM"] = "truecolor"
    return env
