"""Issue 10 item 8: app-chosen text (metric, thread and process names, paths) never reaches the terminal
with a raw control character, in any text or JSON output of the CLI. A real instrumented process names
its metrics and threads with terminal escapes (window title, OSC 52 clipboard write, clear screen, a C1
CSI, a carriage return); the real `perftop` commands are run against it and their bytes are checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text

from perftop.render.units import safe_json, safe_text
from tests.helpers import short_tmp_dir, wait_for
from tests.targets.agent_harness import ROOT, target_env
from tests.targets.exp_procs import Command

TITLE = "\x1b]0;OWNED\x07"
CLIPBOARD = "\x1b]52;c;b3duZWQ=\x07"
CLEAR = "\x1b[2J"
C1_CSI = "\x9b31m"
EVIL = f"t{TITLE}{CLIPBOARD}{CLEAR}{C1_CSI}\r\x7f\x00x"
"""Every kind of control at once: OSC with BEL, CSI, a C1 control, CR, DEL and NUL."""

APP = textwrap.dedent(
    """
    import json, sys, threading, time
    import perftop
    evil = json.loads(sys.argv[2])
    perftop.start(name="evil" + evil, socket_dir=sys.argv[1])
    for _ in range(5):
        with perftop.timer("metric" + evil):
            pass
    perftop.count("counter" + evil, 3)
    perftop.gauge("gauge" + evil, 1.0)
    threading.Thread(target=time.sleep, args=(3600,), name="thread" + evil, daemon=True).start()
    print("ready", flush=True)
    time.sleep(3600)
    """
)


def controls(data: bytes) -> list[str]:
    """The raw control characters in a command's output (line feeds and tabs are layout, not attacks)."""
    text = data.decode("utf-8")
    return [c for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0]


@pytest.fixture(scope="module")
def evil_app() -> Iterator[tuple[int, str]]:
    """(pid, socket dir) of a live process whose metric, counter, gauge, thread and app names are EVIL."""
    with short_tmp_dir() as sockets:
        proc = subprocess.Popen(
            [sys.executable, "-c", APP, sockets, json.dumps(EVIL)],
            stdout=subprocess.PIPE,
            cwd=str(ROOT),
            env=target_env(),
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
            wait_for(lambda: os.path.exists(os.path.join(sockets, f"{proc.pid}.sock")), timeout=20)
            yield proc.pid, sockets
        finally:
            proc.kill()
            proc.wait(timeout=10)


def perftop(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "perftop", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        cwd=str(ROOT),
        env=target_env(),
        check=False,
    )


def test_the_helper_escapes_every_c0_c1_and_del_but_layout() -> None:
    every = "".join(chr(c) for c in range(0xA0))
    out = safe_text(every)
    assert not controls(out.encode()), "a control character survived"
    assert "\\x1b" in out and "\\x9b" in out and "\\x7f" in out and "\\x0d" in out
    assert "\n" in out and "\t" in out
    assert "\n" not in safe_text(every, newlines=False)
    assert safe_text("plain text, ünïcode ✓") == "plain text, ünïcode ✓"
    doc = {"name" + EVIL: [EVIL, 1, None]}
    assert json.loads(safe_json(doc)) == doc
    assert not controls(safe_json(doc).encode())


def test_snapshot_text_and_json_carry_no_raw_control(evil_app: tuple[int, str]) -> None:
    pid, sockets = evil_app
    text = perftop("snapshot", "--pid", str(pid), "--interval", "0.1", "--socket-dir", sockets)
    assert text.returncode == 0, text.stderr
    assert b"metrict\\x1b]0;OWNED\\x07" in text.stdout, "the metric is not in the report, escaped"
    assert controls(text.stdout) == []

    doc = perftop("snapshot", "--pid", str(pid), "--interval", "0.1", "--socket-dir", sockets, "--json")
    assert doc.returncode == 0, doc.stderr
    assert controls(doc.stdout) == []
    parsed = json.loads(doc.stdout)
    assert "metric" + EVIL in parsed["timings"], "the JSON must keep the data intact"
    assert parsed["counters"]["counter" + EVIL]["value"] == 3
    assert parsed["gauges"]["gauge" + EVIL] == 1.0


def test_action_text_and_json_carry_no_raw_control(evil_app: tuple[int, str]) -> None:
    pid, sockets = evil_app
    text = perftop("action", "--pid", str(pid), "threads", "--socket-dir", sockets)
    assert text.returncode == 0, text.stderr
    assert b"thread threadt\\x1b]0;OWNED\\x07" in text.stdout
    assert controls(text.stdout) == []

    doc = perftop("action", "--pid", str(pid), "threads", "--socket-dir", sockets, "--json")
    assert doc.returncode == 0, doc.stderr
    assert controls(doc.stdout) == []
    assert "thread" + EVIL in [t["name"] for t in json.loads(doc.stdout)]


def test_error_lines_escape_the_paths_they_name(tmp_path: Path) -> None:
    evil_path = str(tmp_path / f"rec{EVIL[:-2]}.db")  # no NUL: a path cannot hold one
    replay = perftop("replay", evil_path)
    assert replay.returncode == 2
    assert replay.stderr.startswith(b"perftop: cannot open ") and replay.stderr.count(b"\n") == 1
    assert controls(replay.stderr) == []

    Path(evil_path).write_bytes(b"")
    record = perftop("record", "--pid", str(os.getpid()), "-o", evil_path)
    assert record.returncode == 2
    assert b"already exists" in record.stderr and record.stderr.count(b"\n") == 1
    assert controls(record.stderr) == []


def test_export_label_values_carry_no_raw_control(evil_app: tuple[int, str]) -> None:
    """The exposition format escapes only backslash, quote and newline: other controls are shown as
    escapes by the exporter, and the body stays valid (prometheus_client's parser reads it)."""
    _, sockets = evil_app
    with Command("export", "--listen", "127.0.0.1:0", "--socket-dir", sockets) as cmd:
        port = cmd.wait_line(r"exporting on http://[^:]+:(\d+)/metrics").group(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as response:
            body = response.read()
    assert controls(body) == []
    metrics = {
        s.labels["metric"]
        for fam in parse_text(body.decode())
        for s in fam.samples
        if s.name == "perftop_timing_seconds_count"
    }
    assert safe_text("metric" + EVIL, newlines=False) in metrics, metrics
