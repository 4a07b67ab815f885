"""The py-spy side of profiles: which binary may run, and the conversion of py-spy's raw output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from perftop.collectors import pyspy

RAW = [
    "thread (100): MainThread;<module> (/app/main.py:10);handle (/app/main.py:20);query (/app/db.py:5) 30",
    "thread (100): MainThread;<module> (/app/main.py:10);handle (/app/main.py:22) 10",
    "thread (100): MainThread;<module> (/app/main.py:11);wait (/usr/lib/python3/threading.py:320) 50",
    "thread (101): worker;run (/app/worker.py:3) 10",
    "not a stack line",
]


def test_raw_output_becomes_the_profile_shape() -> None:
    result = pyspy.convert_raw(RAW, pid=100, include_idle=True)
    assert result["samples"] == 100
    assert result["idle_samples"] == 50  # threading.py wait: a known wait
    top = {(row["function"], row["file"]): row for row in result["top"]}
    assert top[("wait", "/usr/lib/python3/threading.py")]["self_samples"] == 50
    assert top[("query", "/app/db.py")]["self_samples"] == 30
    handle = next(row for row in result["top_total"] if row["function"] == "handle")
    assert handle["total_samples"] == 40 and handle["self_samples"] == 10 and handle["line"] == 20
    threads = {t["name"]: t for t in result["threads"]}
    assert threads["MainThread"]["main"] and threads["MainThread"]["native_id"] == 100
    assert not threads["worker"]["main"] and threads["worker"]["samples"] == 10
    folded = dict(line.rsplit(" ", 1) for line in result["folded"].splitlines())
    assert sum(map(int, folded.values())) == 100
    assert "worker;run (/app/worker.py:3)" in folded
    assert result["tree"]["total"] == 100


def test_thread_selection_and_idle_left_out() -> None:
    result = pyspy.convert_raw(RAW, pid=100, include_idle=False, everything=False, tids={100})
    assert result["samples"] == 90 and result["idle_samples"] == 0
    assert {t["name"] for t in result["threads"]} == {"MainThread"}
    named = pyspy.convert_raw(RAW, pid=100, include_idle=False, everything=False, names={"worker"})
    assert named["samples"] == 10


@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership rule applies to root only")
def test_root_refuses_a_pyspy_binary_another_user_controls(tmp_path: Path) -> None:
    trusted = tmp_path / "trusted"
    trusted.mkdir(mode=0o755)
    binary = trusted / "py-spy"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert pyspy._safe_to_run(binary)
    binary.chmod(0o777)
    assert not pyspy._safe_to_run(binary)
    binary.chmod(0o755)
    os.chown(binary, 65534, 65534)
    assert not pyspy._safe_to_run(binary)
    os.chown(binary, 0, 0)
    trusted.chmod(0o777)
    assert not pyspy._safe_to_run(binary)


def test_sampler_choice() -> None:
    assert pyspy.choose_sampler("in-process", os.getpid()) == ("in-process", None)
    with pytest.raises(pyspy.PySpyError, match="sampler must be one of"):
        pyspy.run_profile(os.getpid(), {}, "fastest", lambda params: params)
    with pytest.raises(pyspy.PySpyError, match="cannot use py-spy on PID"):
        pyspy.choose_sampler("py-spy", 2**22 + 12345)  # no such process
