"""CPU profiles taken from outside the process with py-spy, in the shape of the in-process profile.

py-spy reads the target's memory (ptrace) instead of running in it, so it sees every thread where it is,
whether or not that thread lets go of the GIL. It needs ptrace rights on the target: root with
CAP_SYS_PTRACE, or the same user where `kernel.yama.ptrace_scope` allows it. `choose_sampler` decides
whether py-spy can be used for a PID; `pyspy_profile` runs `py-spy record --format raw` and converts its
folded stacks. The py-spy binary is ours (next to this interpreter or on our PATH), never one from the
target's files, and when running as root it must be owned by root and writable by nobody else.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from perftop.wire.profile import TOP_N, call_tree, speedscope

SAMPLERS = ("auto", "in-process", "py-spy")
CAP_SYS_PTRACE = 19
_THREAD = re.compile(r"^thread \((?P<tid>0x[0-9a-fA-F]+|\d+)\)(?:: ?(?P<name>.*))?$")
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>.*):(?P<line>\d+)\)$")
_SAMPLES = re.compile(r"Samples: (\d+) Errors: (\d+)")

# (module file name, function) and bare function names whose innermost frame means the thread is waiting.
_WAIT_FRAMES = frozenset(
    [
        ("threading.py", "wait"),
        ("threading.py", "_wait_for_tstate_lock"),
        ("threading.py", "join"),
        ("queue.py", "get"),
        ("selectors.py", "select"),
        ("socket.py", "accept"),
        ("socket.py", "readinto"),
        ("ssl.py", "read"),
        ("ssl.py", "recv_into"),
        ("subprocess.py", "wait"),
        ("subprocess.py", "_wait"),
        ("subprocess.py", "_try_wait"),
        ("connection.py", "_recv"),
        ("connection.py", "_poll"),
    ]
)
_BLOCKING_CALL = re.compile(
    r"\b(sleep|select|poll|epoll|accept|recv|recv_into|recvfrom|read|readline|wait|waitpid|acquire|join|"
    r"get|connect|sendall|input|sigwait|pause|getaddrinfo)\s*\("
)


class PySpyError(Exception):
    """py-spy cannot be used or failed; str() is a one-line message for the user."""


def find_pyspy() -> str | None:
    """Path of a py-spy binary we may run: next to this interpreter first (our venv), then on PATH.

    As root, a binary someone else could have replaced (not owned by root, or writable by group or others,
    itself or its directory) is refused: root never runs a file another user controls.
    """
    candidates = [Path(sys.executable).parent / "py-spy"]
    found = shutil.which("py-spy")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK) and _safe_to_run(path):
            return str(path)
    return None


def _safe_to_run(path: Path) -> bool:
    if os.geteuid() != 0:
        return True
    try:
        real = path.resolve(strict=True)
        for item in (real, real.parent):
            info = item.stat()
            if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return False
    except OSError:
        return False
    return True


def _has_capability(bit: int) -> bool:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _ptrace_scope() -> int:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope", encoding="ascii") as scope:
            return int(scope.read().strip())
    except (OSError, ValueError):
        return 0


def _is_descendant(pid: int) -> bool:
    """Whether `pid` is a child, grandchild... of this process."""
    own = os.getpid()
    current = pid
    for _ in range(64):
        try:
            with open(f"/proc/{current}/stat", encoding="ascii", errors="replace") as stat_file:
                fields = stat_file.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return False
        parent = int(fields[1])
        if parent == own:
            return True
        if parent <= 1:
            return False
        current = parent
    return False


def ptrace_refusal(pid: int) -> str | None:
    """Why this process may not ptrace `pid` (so py-spy would fail), or None if it may."""
    if not sys.platform.startswith("linux"):
        return "py-spy is only used on Linux here"
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return f"process {pid} is not readable"
    privileged = _has_capability(CAP_SYS_PTRACE)
    if os.geteuid() == 0:
        return None if privileged else "running as root without CAP_SYS_PTRACE (a container?)"
    if owner != os.geteuid() and not privileged:
        return f"process {pid} belongs to another user"
    scope = _ptrace_scope()
    if scope == 0 or privileged:
        return None
    if scope == 1:
        return None if _is_descendant(pid) else "kernel.yama.ptrace_scope is 1 and the process is not ours"
    return f"kernel.yama.ptrace_scope is {scope}"


def choose_sampler(requested: str, pid: int) -> tuple[str, str | None]:
    """The sampler to use ("py-spy" or "in-process") for `requested`, and why py-spy was not chosen.

    Raises PySpyError when py-spy was asked for explicitly and cannot be used.
    """
    if requested == "in-process":
        return "in-process", None
    binary = find_pyspy()
    reason = "py-spy is not installed (pip install 'perftop[pyspy]')" if binary is None else None
    if reason is None:
        reason = ptrace_refusal(pid)
    if reason is None:
        return "py-spy", None
    if requested == "py-spy":
        raise PySpyError(f"cannot use py-spy on PID {pid}: {reason}")
    return "in-process", reason


def _threads_wanted(value: Any, pid: int) -> tuple[bool, set[str], set[int]]:
    """(everything, names, native ids) from the `threads` parameter; "main" is the thread whose tid is PID."""
    if value is None or value == "all":
        return True, set(), set()
    names: set[str] = set()
    tids: set[int] = set()
    for item in value if isinstance(value, list) else [value]:
        if item == "main":
            tids.add(pid)
        elif isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            tids.add(int(item))
        elif isinstance(item, str) and item:
            names.add(item)
        else:
            raise PySpyError(f'threads must be "all", "main", a thread name or id, got {item!r}')
    return False, names, tids


def pyspy_profile(
    pid: int,
    seconds: float = 5.0,
    hz: float = 100.0,
    threads: Any = None,
    include_idle: bool = False,
    binary: str | None = None,
) -> dict[str, Any]:
    """Profile `pid` with py-spy for `seconds` (whole seconds, at least 1) at `hz`; the in-process shape.

    `--nonblocking`: the target is never paused (the budget says it must not be stalled); a stack can then be
    read while it changes, which costs py-spy a few error samples, not the target anything.
    """
    binary = binary or find_pyspy()
    if binary is None:
        raise PySpyError("py-spy is not installed (pip install 'perftop[pyspy]')")
    everything, names, tids = _threads_wanted(threads, pid)
    duration = max(1, math.ceil(seconds))
    rate = max(1, round(hz))
    with tempfile.TemporaryDirectory(prefix="perftop-pyspy-") as tmp:
        out = os.path.join(tmp, "profile.txt")
        command = [binary, "record", "--pid", str(pid), "--duration", str(duration), "--rate", str(rate)]
        command += ["--format", "raw", "--threads", "--nonblocking", "--full-filenames", "-o", out]
        if include_idle:
            command.append("--idle")
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=duration + 60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PySpyError(f"py-spy failed: {exc}") from None
        stderr = done.stderr.decode(errors="replace")
        if done.returncode != 0 or not os.path.exists(out):
            lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(" ")]
            raise PySpyError(f"py-spy failed on PID {pid}: {lines[0] if lines else done.returncode}"[:300])
        with open(out, encoding="utf-8", errors="replace") as raw:
            text = raw.read()
    counts = _SAMPLES.search(done.stdout.decode(errors="replace") + stderr)
    result = convert_raw(text.splitlines(), pid, include_idle, everything, names, tids)
    result.update(
        {
            "sampler": "py-spy",
            "seconds": float(duration),
            "requested_seconds": seconds,
            "hz": float(rate),
            "effective_hz": round(result["samples"] / duration / max(1, len(result["threads"])), 3),
            "include_idle": include_idle,
            "cancelled": False,
            "pyspy": {
                "binary": binary,
                "samples": int(counts.group(1)) if counts else None,
                "errors": int(counts.group(2)) if counts else None,
            },
        }
    )
    return result


def _wait_frame(name: str, path: str, line: int) -> bool:
    """Whether a thread whose innermost Python frame is this is waiting (its line calls a blocking call)."""
    if (os.path.basename(path), name) in _WAIT_FRAMES:
        return True
    try:
        import linecache

        source = linecache.getline(path, line)
    except (OSError, UnicodeDecodeError):
        return False
    return bool(_BLOCKING_CALL.search(source))


def convert_raw(
    lines: Iterable[str],
    pid: int,
    include_idle: bool,
    everything: bool = True,
    names: set[str] | None = None,
    tids: set[int] | None = None,
) -> dict[str, Any]:
    """Turn py-spy's raw output (`thread (TID): NAME;func (file:line);... COUNT`) into the profile shape.

    A function is (name, file); its `line` is the lowest line py-spy saw it at (py-spy reports the running
    line, not the definition). With --idle, which samples were idle is not in py-spy's output: a sample
    counts as idle when its innermost frame's line calls a blocking function (`idle_samples_estimated`).
    """
    names = names or set()
    tids = tids or set()
    per_thread: dict[int, dict[tuple[str, ...], int]] = {}
    thread_names: dict[int, str] = {}
    thread_samples: dict[int, int] = {}
    thread_idle: dict[int, int] = {}
    label_info: dict[str, tuple[str, str, int]] = {}
    first_line: dict[tuple[str, str], int] = {}
    self_counts: dict[tuple[str, str], int] = {}
    total_counts: dict[tuple[str, str], int] = {}
    line_counts: dict[tuple[str, int], int] = {}
    total = idle_total = 0
    for raw in lines:
        stack_text, _space, count_text = raw.rstrip("\n").rpartition(" ")
        if not stack_text or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack_text.split(";")
        head = _THREAD.match(parts[0])
        if head is None:
            continue
        tid = int(head.group("tid"), 0)
        name = (head.group("name") or f"Thread-{tid}").strip()
        if not everything and tid not in tids and name not in names:
            continue
        thread_names[tid] = name
        frames: list[tuple[str, str, int]] = []
        for part in parts[1:]:
            match = _FRAME.match(part)
            frames.append(
                (match.group("name"), match.group("file"), int(match.group("line")))
                if match
                else (part, "", 0)
            )
        idle = bool(frames) and include_idle and _wait_frame(*frames[-1])
        total += count
        thread_samples[tid] = thread_samples.get(tid, 0) + count
        if idle:
            idle_total += count
            thread_idle[tid] = thread_idle.get(tid, 0) + count
        labels = []
        for func, path, line in frames:
            label = f"{func} ({path}:{line})" if path else func
            label_info.setdefault(label, (func, path, line))
            labels.append(label)
            key = (func, path)
            first_line[key] = min(first_line.get(key, line), line)
        stacks = per_thread.setdefault(tid, {})
        stacks[tuple(labels)] = stacks.get(tuple(labels), 0) + count
        if not frames:
            continue
        func, path, line = frames[-1]
        self_counts[(func, path)] = self_counts.get((func, path), 0) + count
        if path:
            line_counts[(path, line)] = line_counts.get((path, line), 0) + count
        for key in {(f, p) for f, p, _line in frames}:
            total_counts[key] = total_counts.get(key, 0) + count

    def rows(order: dict[tuple[str, str], int]) -> list[dict[str, Any]]:
        ranked = sorted(order, key=lambda f: (-order[f], -total_counts.get(f, 0), f))[:TOP_N]
        return [
            {
                "function": f[0],
                "file": f[1],
                "line": first_line.get(f, 0),
                "self_samples": self_counts.get(f, 0),
                "total_samples": total_counts.get(f, 0),
            }
            for f in ranked
        ]

    def thread_label(tid: int) -> str:
        return thread_names.get(tid, f"Thread-{tid}").replace(";", ",") or f"Thread-{tid}"

    folded: dict[str, int] = {}
    for tid, stacks in per_thread.items():
        for path_labels, count in stacks.items():
            line_text = ";".join((thread_label(tid), *path_labels))
            folded[line_text] = folded.get(line_text, 0) + count
    ranked_lines = sorted(line_counts, key=lambda w: (-line_counts[w], w))[:TOP_N]
    return {
        "samples": total,
        "idle_samples": idle_total,
        "idle_samples_estimated": include_idle,
        "threads": [
            {
                "name": thread_names[tid],
                "ident": None,
                "native_id": tid,
                "samples": thread_samples[tid],
                "idle_samples": thread_idle.get(tid, 0),
                "main": tid == pid,
            }
            for tid in sorted(thread_samples, key=lambda t: (-thread_samples[t], t))
        ],
        "top": rows(self_counts),
        "top_total": rows(total_counts),
        "lines": [{"file": w[0], "line": w[1], "samples": line_counts[w]} for w in ranked_lines],
        "folded": "".join(f"{line} {folded[line]}\n" for line in sorted(folded)),
        "tree": call_tree(per_thread, thread_label, label_info, total),
        "speedscope": speedscope(per_thread, thread_label, label_info, pid),
        "notes": [
            "Sampled from outside by py-spy (ptrace, --nonblocking): every thread is seen where it is, "
            "GIL or not. Time in a C extension is charged to the Python line that called it."
            + (
                " Idle samples are included; which of them were idle is estimated from the line each "
                "thread stood on."
                if include_idle
                else " Idle samples were left out by py-spy."
            )
        ],
    }


def run_profile(
    pid: int, params: dict[str, Any], requested: str, in_process: Callable[[dict[str, Any]], Any]
) -> Any:
    """A profile of `pid` by the `requested` sampler ("auto": py-spy where it can run, else in-process).

    `in_process` runs the agent's profile action with `params`. Under "auto" a py-spy failure falls back to
    it, and the result's `sampler_note` says why py-spy was not used. Raises PySpyError for "py-spy".
    """
    if requested not in SAMPLERS:
        raise PySpyError(f"sampler must be one of {', '.join(SAMPLERS)}, got {requested!r}")
    sampler, reason = choose_sampler(requested, pid)
    if sampler == "py-spy":
        seconds = float(params.get("seconds") or 5.0)
        hz = float(params.get("hz") or 100.0)
        if not 0.01 <= seconds <= 300 or not 1 <= hz <= 1000:
            raise PySpyError("seconds must be between 0.01 and 300 and hz between 1 and 1000")
        try:
            return pyspy_profile(pid, seconds, hz, params.get("threads"), bool(params.get("include_idle")))
        except PySpyError as exc:
            if requested == "py-spy":
                raise
            reason = str(exc)
    result = in_process(params)
    if isinstance(result, dict) and reason:
        result["sampler_note"] = f"py-spy not used: {reason}"
    return result
