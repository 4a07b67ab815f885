"""Issue 10 item 12: bad input is one `perftop: ` line on stderr and exit 2, never a traceback, a hang or
a blown-up memory. Every case runs the real `perftop` command (or a real agent) on the crafted input."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from perftop.wire.protocol import PROTOCOL_VERSION, FrameDecoder
from tests.helpers import run_perftop, short_tmp_dir, wait_for
from tests.targets.agent_harness import ROOT, Target, target_env
from tests.targets.exp_procs import run

SCRIPT = Path(__file__).resolve().parents[1] / "targets" / "exp_target.py"


def perftop(
    *args: str, stdin: int | None = subprocess.DEVNULL, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_perftop(*args, env=env or target_env(), timeout=60, cwd=ROOT, stdin=stdin)


def assert_one_line(result: subprocess.CompletedProcess[str], fragment: str, code: int = 2) -> None:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("perftop: "), result.stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short recording of a real instrumented process (copied by each test that damages it)."""
    path = tmp_path_factory.mktemp("rec") / "source.rec"
    with short_tmp_dir() as sockets, Target(sockets, "src", script=SCRIPT) as app:
        app.cmd("metrics 3 50")
        result = run(
            "record", "--pid", str(app.pid), "-o", str(path), "--interval", "0.05", "--duration", "1",
            "--socket-dir", sockets,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    return path


def test_a_theme_nested_100k_deep_is_one_line(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert_one_line(perftop("--theme", str(deep)), "deep.json")
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert_one_line(perftop("--theme", str(fifo)), "fifo.json: not a regular file")


@pytest.mark.parametrize("interval", ["0", "-1", "1e400", '"1"', "true"])
def test_a_recording_with_a_bad_interval_is_one_line(recording: Path, tmp_path: Path, interval: str) -> None:
    path = tmp_path / "bad.rec"
    shutil.copy(recording, path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'interval'", (interval,))
    assert_one_line(perftop("replay", str(path)), "lacks a valid 'interval'")


def test_a_fifo_given_to_replay_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "rec.fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    assert_one_line(perftop("replay", str(fifo)), "not a regular file")
    assert time.monotonic() - started < 30


def test_a_zlib_bomb_in_a_recording_is_refused_in_bounded_memory(recording: Path, tmp_path: Path) -> None:
    path = tmp_path / "bomb.rec"
    shutil.copy(recording, path)
    co = zlib.compressobj(9)
    chunk = b"0" * (1 << 20)
    bomb = b"".join(co.compress(chunk) for _ in range(1024)) + co.flush()  # 1 GiB of '0' in ~1 MB
    with sqlite3.connect(path) as db:
        first = db.execute("SELECT min(id) FROM samples").fetchone()[0]
        db.execute("UPDATE samples SET payload = ? WHERE id = ?", (bomb, first))
    proc = subprocess.Popen(
        [sys.executable, "-m", "perftop", "replay", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=str(ROOT),
        env=target_env(),
    )
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 2, stderr
    assert stderr.startswith("perftop: ") and stderr.count("\n") == 1 and "inflates past" in stderr, stderr
    # ru_maxrss is in KiB on Linux: the process never held the inflated GiB (about 120 MB is its baseline).
    assert usage.ru_maxrss * 1024 < 400 * 1024 * 1024, usage.ru_maxrss


APP = textwrap.dedent(
    """
    import sys, time
    import perftop
    perftop.start(name="bad-input", socket_dir=sys.argv[1])
    print("ready", flush=True)
    time.sleep(3600)
    """
)


@pytest.fixture
def agent_app() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    with short_tmp_dir() as sockets:
        proc = subprocess.Popen(
            [sys.executable, "-c", APP, sockets],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(ROOT),
            env=target_env(),
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            wait_for(lambda: os.path.exists(os.path.join(sockets, f"{proc.pid}.sock")), timeout=20)
            yield proc, sockets
        finally:
            proc.kill()
            proc.wait(timeout=10)


def test_explain_analyze_without_yes_and_without_a_tty_is_exit_2(
    agent_app: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, sockets = agent_app
    args = ("action", "--pid", str(proc.pid), "explain", "--fingerprint", "x", "--analyze")
    for stdin in (subprocess.DEVNULL, None):
        # None: the child gets our stdin, which under pytest is not a TTY either; then a closed stdin.
        assert_one_line(perftop(*args, "--socket-dir", sockets, stdin=stdin), "add --yes")
    closed = subprocess.run(
        ["sh", "-c", 'exec "$@" <&-', "sh", sys.executable, "-m", "perftop", *args, "--socket-dir", sockets],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(ROOT),
        env=target_env(),
        check=False,
    )
    assert_one_line(closed, "add --yes")


def frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


def test_a_window_of_1e400_is_an_error_response_not_a_traceback(
    agent_app: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, sockets = agent_app
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(os.path.join(sockets, f"{proc.pid}.sock"))
        hello = {"type": "hello", "role": "viewer", "pid": os.getpid(), "protocol": PROTOCOL_VERSION}
        sock.sendall(frame(json.dumps(hello).encode()))
        decoder = FrameDecoder()
        answers: list[dict[str, object]] = []
        windows = ["1e400", "-1e400", "1" + "0" * 400]
        for i, window in enumerate([*windows, "10"], start=1):
            request = f'{{"type":"request","id":{i},"method":"stats","params":{{"window":{window}}}}}'
            sock.sendall(frame(request.encode()))
        while len(answers) < 1 + len(windows) + 1:
            data = sock.recv(1 << 20)
            assert data, f"the agent closed the connection: {answers}"
            answers += decoder.feed(data)
    responses = {a["id"]: a for a in answers if a.get("type") == "response"}
    for i in range(1, len(windows) + 1):
        assert responses[i]["ok"] is False and "finite" in str(responses[i]["error"]), responses[i]
    assert responses[len(windows) + 1]["ok"] is True  # the agent goes on serving
    proc.kill()
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode()
    assert "Traceback" not in stderr and "OverflowError" not in stderr, stderr


def test_demo_refuses_a_planted_symlink_for_its_log(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    env = {**target_env(), "TMPDIR": str(tmp_path)}
    private = tmp_path / f"perftop-demo-{os.getuid()}"

    # The log's directory planted as a symlink to a directory the attacker chose.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    private.symlink_to(elsewhere)
    assert_one_line(perftop("demo", env=env), "symlink")
    assert os.listdir(elsewhere) == []
    private.unlink()

    # The log itself planted as a symlink (in a directory of ours): never followed.
    private.mkdir(mode=0o700)
    (private / "demo.log").symlink_to(victim)
    assert_one_line(perftop("demo", env=env), "demo.log")
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--hz", "inf"),
        ("--hz", "nan"),
        ("--hz", "1e400"),
        ("--hz", "0"),
        ("--frames", "1" + "0" * 30),
        ("--top", "-5"),
        ("--frames", "many"),
    ],
)
def test_action_options_out_of_range_are_exit_2_before_reaching_the_agent(option: str, value: str) -> None:
    """Values the agent would refuse (or that JSON cannot carry) are bad input, not a runtime failure."""
    result = perftop("action", "--pid", str(os.getpid()), "profile", option, value)
    assert_one_line(result, f"argument {option}")
