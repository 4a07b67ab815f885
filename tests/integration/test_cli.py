"""The command line: every bad-input case is one `perftop: ` line, exit code 2, and no traceback."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from tests.foreign_user import interpreter_for, run_as
from tests.helpers import run_perftop


def perftop(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_perftop(*args, env=dict(os.environ), timeout=timeout, stdin=subprocess.DEVNULL)


def assert_usage_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("perftop: "), lines[0]
    assert fragment in lines[0], lines[0]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("args", [("--pid", "{pid}"), ("attach", "{pid}"), ("snapshot", "--pid", "{pid}")])
def test_no_such_pid(args: tuple[str, ...]) -> None:
    pid = str(dead_pid())
    assert_usage_error(perftop(*(a.format(pid=pid) for a in args)), f"no process with PID {pid}")


@pytest.mark.parametrize("value", ["abc", "-3", "0", "1.5"])
def test_non_numeric_pid(value: str) -> None:
    assert_usage_error(perftop("--pid", value), "PID must be a positive whole number")


def test_unknown_option() -> None:
    assert_usage_error(perftop("--bogus"), "unrecognized arguments: --bogus")


def test_unknown_command_argument() -> None:
    assert_usage_error(perftop("snapshot", "--interval", "never"), "expected a number of seconds")


def test_unknown_theme() -> None:
    assert_usage_error(perftop("--theme", "no-such-theme"), "unknown theme 'no-such-theme'")


def test_malformed_theme_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text('{"name": "broken", "primary": ')
    assert_usage_error(perftop("--theme", str(bad)), f"theme file {bad}")
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"name": "wrong", "primary": "#fff", "sparkle": 1}')
    assert_usage_error(perftop("--theme", str(wrong)), "unknown keys sparkle")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run perftop as another user")
def test_access_denied_says_what_is_missing() -> None:
    nobody = pwd.getpwnam("nobody")
    exe = interpreter_for(nobody.pw_uid, nobody.pw_gid)
    assert exe is not None, "no Python that user nobody can run"
    snapshot = ["-m", "perftop", "snapshot", "--pid", "1", "--interval", "0.1"]
    result = run_as(nobody.pw_uid, nobody.pw_gid, exe, *snapshot)
    assert_usage_error(result, "cannot read PID 1 (owned by root)")


def test_version_and_help() -> None:
    out = perftop("--version")
    assert out.returncode == 0 and out.stdout.startswith("perftop ")
    helped = perftop("snapshot", "--help")
    assert helped.returncode == 0 and "--json" in helped.stdout


def test_snapshot_json_has_the_contract_keys() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        result = perftop("snapshot", "--pid", str(child.pid), "--interval", "0.3", "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
    finally:
        child.kill()
        child.wait()
    assert {"perftop_version", "taken_at", "hostname", "system", "process", "agent", "timings"} <= set(doc)
    system = doc["system"]
    assert set(system["memory"]) == {"total_bytes", "used_bytes", "available_bytes", "percent"}
    assert set(system["disk_io"]) == {
        "read_bytes_per_s",
        "write_bytes_per_s",
        "read_ops_per_s",
        "write_ops_per_s",
    }
    assert set(system["net_io"]) == {"sent_bytes_per_s", "recv_bytes_per_s"}
    assert len(system["per_cpu_percent"]) == os.cpu_count()
    proc = doc["process"]
    assert proc["pid"] == child.pid
    assert proc["limits"]["nofile"]["used"] >= 3
    assert doc["agent"] is None and doc["timings"] == {}


def test_snapshot_text_report() -> None:
    result = perftop("snapshot", "--interval", "0.2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("host ")
    assert "memory" in result.stdout and "network" in result.stdout
