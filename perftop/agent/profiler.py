"""CPU profiles taken inside the monitored process: a sampling profiler and a deterministic (cProfile) one.

Both run in the agent's action thread, never on an app thread. The sampler reads `sys._current_frames()` on
a fixed schedule. While sampling it only counts: stacks are keyed by code ids and bytecode offsets, a thread
that has not moved since the last sample costs a few counter bumps, and a thread that has moved is walked
only down to the first frame still in place. Names, files, lines and the idle/busy split are resolved once
at the end. A sample is idle when its innermost frame is a known wait (threading, queue, selectors...) or a
call to a blocking C function (sleep, recv, select...), or when the thread stayed put without using CPU
(Linux per-thread CPU clocks).

The sampler thread only gets the GIL when an app thread lets go of it, mostly at blocking calls, so it
sees threads at their waits and misses short bursts of Python between them. For the main thread, where the
app leaves SIGPROF alone, a SIGPROF handler installed for the profile (from the main thread, through
Py_AddPendingCall) does better: a timer on the main thread's own CPU clock signals it while it computes,
and the handler, run by the main thread itself, charges that CPU time to where it is. Its waits and its
time runnable come from /proc schedstat and from where the sampler thread saw it waiting (_SignalSession,
_entries). Standard library only (ctypes for Py_AddPendingCall and timer_create, where present).
"""

from __future__ import annotations

import bisect
import cProfile
import dis
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import CodeType, FrameType
from typing import Any

from perftop.wire.profile import TOP_N, call_tree, speedscope

PERFTOP_THREAD_PREFIX = "perftop"
"""Threads whose name starts with this belong to perftop and are never profiled."""

MAX_DEPTH = 256
"""Frames kept per sampled stack (innermost first); deeper stacks lose their outermost frames."""

MAX_STACKS = 100_000
"""Distinct (thread, stack) keys kept in one profile; samples of further new stacks go to dropped_samples."""

_TRUNCATED = "<truncated>"

# (stdlib module path relative to the stdlib directory, function name): Python functions that block.
_WAIT_FUNCTIONS: frozenset[tuple[str, str]] = frozenset(
    [
        ("threading.py", "wait"),
        ("threading.py", "wait_for"),
        ("threading.py", "_wait_for_tstate_lock"),
        ("threading.py", "join"),
        ("threading.py", "acquire"),
        ("queue.py", "get"),
        ("queue.py", "put"),
        ("queue.py", "join"),
        ("selectors.py", "select"),
        ("socket.py", "accept"),
        ("socket.py", "readinto"),
        ("socket.py", "create_connection"),
        ("ssl.py", "read"),
        ("ssl.py", "recv"),
        ("ssl.py", "recv_into"),
        ("ssl.py", "accept"),
        ("ssl.py", "do_handshake"),
        ("subprocess.py", "wait"),
        ("subprocess.py", "_wait"),
        ("subprocess.py", "_try_wait"),
        ("subprocess.py", "communicate"),
        ("subprocess.py", "_communicate"),
        ("multiprocessing/connection.py", "wait"),
        ("multiprocessing/connection.py", "_recv"),
        ("multiprocessing/connection.py", "_poll"),
        ("multiprocessing/connection.py", "accept"),
        ("concurrent/futures/thread.py", "_worker"),
        ("concurrent/futures/_base.py", "result"),
        ("concurrent/futures/_base.py", "wait"),
        ("concurrent/futures/_base.py", "as_completed"),
    ]
)

# Names of C functions/methods that block when called: a frame stopped on a call to one of these is waiting.
_BLOCKING_CALLS: frozenset[str] = frozenset(
    [
        "sleep",
        "select",
        "poll",
        "epoll",
        "kevent",
        "control",
        "accept",
        "recv",
        "recv_into",
        "recvfrom",
        "recvfrom_into",
        "recvmsg",
        "read",
        "readinto",
        "readline",
        "readlines",
        "wait",
        "waitpid",
        "wait3",
        "wait4",
        "waitid",
        "acquire",
        "connect",
        "sendall",
        "input",
        "sigwait",
        "sigwaitinfo",
        "sigtimedwait",
        "pause",
        "flock",
        "lockf",
        "getaddrinfo",
        "gethostbyname",
    ]
)

_CALL_OPS: frozenset[str] = frozenset(
    ["CALL", "CALL_KW", "CALL_FUNCTION", "CALL_METHOD", "CALL_FUNCTION_KW", "CALL_FUNCTION_EX", "PRECALL"]
)
_LOAD_OPS: frozenset[str] = frozenset(
    [
        "LOAD_ATTR",
        "LOAD_METHOD",
        "LOAD_GLOBAL",
        "LOAD_NAME",
        "LOAD_FAST",
        "LOAD_FAST_CHECK",
        "LOAD_DEREF",
        "LOAD_CLASSDEREF",
        "LOAD_SUPER_ATTR",
    ]
)


class ProfilerBusy(Exception):
    """A deterministic profile is already running, or another profiling tool holds the interpreter hook."""


def thread_names() -> dict[int, tuple[str, int | None]]:
    """Ident -> (name, native id) of every thread the threading module knows."""
    return {t.ident: (t.name, t.native_id) for t in threading.enumerate() if t.ident is not None}


class ThreadFilter:
    """Which threads a profile covers: all of them, or those matching names or idents given by the user."""

    def __init__(
        self, names: Iterable[str] = (), idents: Iterable[int] = (), everything: bool = True
    ) -> None:
        self.names = frozenset(names)
        self.idents = frozenset(idents)
        self.everything = everything

    def wants(self, ident: int, name: str) -> bool:
        return self.everything or ident in self.idents or name in self.names


def _cpu_clock_id(native_id: int | None) -> int | None:
    """Linux clock id of a thread's CPU-time clock, derived from its kernel tid (the kernel's own encoding).

    Unlike `time.pthread_getcpuclockid`, this never touches the pthread handle of a thread that may have
    exited meanwhile: reading the clock of a dead tid only fails with OSError.
    """
    if native_id is None or not _HAVE_THREAD_CLOCKS:
        return None
    return (~native_id << 3) | 6


_HAVE_THREAD_CLOCKS = sys.platform.startswith("linux") and hasattr(time, "clock_gettime_ns")
_STALL_RATIO = 20
"""A thread that stayed at one position and used under 1/20 of the wall time in CPU was waiting there."""


class _Cell:
    """Counts of one (thread, stack): samples, and samples found waiting. Holds the stack's code objects."""

    __slots__ = ("codes", "count", "runnable", "stalled")

    def __init__(self, codes: tuple[Any, ...]) -> None:
        self.codes = codes
        self.count = 0
        self.stalled = 0
        self.runnable = 0


class _Run:
    """A thread's current position and stack, and the consecutive samples taken there.

    While a thread's innermost frame, offset and caller stay the same, samples only bump counters (no stack
    walk, no hashing). When the thread moves, the CPU time it used during the run decides whether the run's
    samples were waiting (blocked in C, off-CPU) rather than computing; and the new stack's walk stops at the
    first frame still in place from this run's stack, whose outer part is reused.
    """

    __slots__ = (
        "_ids",
        "back",
        "cell",
        "cpu",
        "frame",
        "frames",
        "key",
        "lasti",
        "positions",
        "samples",
        "wall",
    )

    def __init__(
        self,
        frames: list[FrameType | None],
        key: list[int],
        cell: _Cell | None,
        cpu: int,
        wall: int,
    ) -> None:
        frame = frames[0]
        assert frame is not None
        self.frame = frame
        self.lasti = key[1]
        self.back = frame.f_back
        self.frames = frames
        self._ids: set[int] | None = None
        self.key = key
        self.cell = cell
        self.cpu = cpu
        self.wall = wall
        self.samples = 0

    def close(self, cpu: int, wall: int) -> None:
        """End the run given the thread's CPU clock (-1: unknown) and the time now."""
        cell = self.cell
        if (
            cell is not None
            and cpu >= 0
            and self.cpu >= 0
            and (cpu - self.cpu) * _STALL_RATIO < wall - self.wall
        ):
            cell.stalled += self.samples

    def ids(self) -> set[int]:
        """Ids of this run's frames (they are kept alive by the run, so ids are not reused meanwhile)."""
        if self._ids is None:
            self._ids = set(map(id, self.frames))
        return self._ids

    def shared_from(self, frame: FrameType) -> int:
        """Index of `frame` (one of this run's frames) if the stack from there outwards is the same, or -1."""
        frames = self.frames
        index = frames.index(frame)
        outer = frames[index + 1] if index + 1 < len(frames) else None
        if frames[index] is frame and self.key[2 * index + 1] == frame.f_lasti and frame.f_back is outer:
            return index
        return -1


class _Sampler:
    """Collects per-thread stack counts, keyed by code ids and offsets so that a sample hashes little."""

    def __init__(self, selection: ThreadFilter) -> None:
        self.selection = selection
        self.own = threading.get_ident()
        self.counts: dict[tuple[int, tuple[int, ...]], _Cell] = {}
        self.names: dict[int, tuple[str, int | None]] = {}
        self.clocks: dict[int, int] = {}
        self.skip: set[int] = {self.own}
        self.known: set[int] = set()
        self.runs: dict[int, _Run] = {}
        self.dropped = 0
        self.ticks = 0
        self.signal_ident: int | None = None
        self.signal_key = 0
        self.own_codes: frozenset[Any] = frozenset()
        self.state_fd = -1

    def use_signal(self, ident: int, own_codes: frozenset[Any], tid: int) -> None:
        """From now on, samples of thread `ident` (the main thread) only tell where it waits: they go under a
        key of their own, and the frames of the signal handler running in it are skipped."""
        self.signal_ident = ident
        self.signal_key = -1 - ident
        self.own_codes = own_codes
        try:
            self.state_fd = os.open(f"/proc/self/task/{tid}/stat", os.O_RDONLY)
        except OSError:
            self.state_fd = -1
        clock = self.clocks.get(ident)
        if clock is not None:
            self.clocks[self.signal_key] = clock

    def refresh_threads(self, present: Iterable[int]) -> None:
        """Re-read thread names; threads unknown to `threading` keep a synthetic name."""
        self.names.update(thread_names())
        main = threading.main_thread()
        # A stale native id (e.g. in a forked child): the main thread is the thread-group leader.
        if (
            main.ident in self.names
            and main.native_id != os.getpid()
            and (main.native_id is None or not os.path.exists(f"/proc/self/task/{main.native_id}"))
        ):
            self.names[main.ident] = (main.name, os.getpid())
        for ident in present:
            if ident not in self.names:
                self.names[ident] = (f"Thread-{ident}", None)
        self.known = set(self.names)
        self.clocks.clear()
        for ident, (name, native_id) in self.names.items():
            if (
                ident == self.own
                or name.startswith(PERFTOP_THREAD_PREFIX)
                or not self.selection.wants(ident, name)
            ):
                self.skip.add(ident)
                continue
            self.skip.discard(ident)
            clock_id = _cpu_clock_id(native_id)
            if clock_id is not None:
                self.clocks[ident] = clock_id
                if ident == self.signal_ident:
                    self.clocks[self.signal_key] = clock_id
        alive = set(present)
        if self.signal_ident is not None:
            alive.add(self.signal_key)
        for ident in list(self.runs):
            if ident not in alive:
                del self.runs[ident]

    def cpu_ns(self, ident: int) -> int:
        """The thread's CPU time in ns, or -1 where it cannot be read."""
        clock_id = self.clocks.get(ident)
        if clock_id is None:
            return -1
        try:
            return time.clock_gettime_ns(clock_id)
        except OSError:
            del self.clocks[ident]
            return -1

    def sample(self) -> None:
        """Take one sample of every selected thread."""
        frames = sys._current_frames()
        now = time.perf_counter_ns()
        self.ticks += 1
        if not self.known.issuperset(frames):
            self.refresh_threads(frames)
        skip = self.skip
        runs = self.runs
        for ident, frame in frames.items():
            if ident in skip:
                continue
            runnable = False
            if ident == self.signal_ident:
                ident = self.signal_key
                runnable = self.state_fd >= 0 and self.main_runnable()
                if frame.f_code in self.own_codes:
                    outer = frame.f_back
                    while outer is not None and outer.f_code in self.own_codes:
                        outer = outer.f_back
                    if outer is None:
                        continue
                    frame = outer
            run = runs.get(ident)
            if (
                run is not None
                and run.frame is frame
                and run.lasti == frame.f_lasti
                and run.back is frame.f_back
            ):
                cell = run.cell
                if cell is not None:
                    cell.count += 1
                    cell.runnable += runnable
                    run.samples += 1
                else:
                    self.dropped += 1
                continue
            cpu = self.cpu_ns(ident)
            if run is not None:
                run.close(cpu, now)
            run = runs[ident] = self._new_run(ident, frame, run, cpu, now)
            if run.cell is not None:
                run.cell.count += 1
                run.cell.runnable += runnable
                run.samples = 1
            else:
                self.dropped += 1

    def _new_run(self, ident: int, frame: FrameType, previous: _Run | None, cpu: int, now: int) -> _Run:
        """Walk the stack ending at `frame`, reusing what is still in place from `previous`; find its cell."""
        frames: list[FrameType | None] = []
        key: list[int] = []
        add_frame = frames.append
        add_key = key.append
        current: FrameType | None = frame
        depth = 0
        previous_ids = previous.ids() if previous is not None else None
        while current is not None:
            if previous_ids is not None and previous is not None and id(current) in previous_ids:
                shared = previous.shared_from(current)
                if shared >= 0:
                    frames += previous.frames[shared:]
                    key += previous.key[2 * shared :]
                    break
            if depth == MAX_DEPTH:
                add_frame(None)
                add_key(0)
                add_key(0)
                break
            add_frame(current)
            add_key(id(current.f_code))
            add_key(current.f_lasti)
            current = current.f_back
            depth += 1
        entry = (ident, tuple(key))
        cell = self.counts.get(entry)
        if cell is None and len(self.counts) < MAX_STACKS:
            codes = tuple(_TRUNCATED if f is None else f.f_code for f in frames)
            cell = self.counts[entry] = _Cell(codes)
        return _Run(frames, key, cell, cpu, now)

    def main_runnable(self) -> bool:
        """Whether the main thread is running or runnable right now (state R, as py-spy reads it)."""
        try:
            return os.pread(self.state_fd, 128, 0).rpartition(b")")[2].split()[0] == b"R"
        except (OSError, IndexError):
            return False

    def finish(self) -> None:
        """Close every open run and drop the frames still referenced."""
        if self.state_fd >= 0:
            os.close(self.state_fd)
            self.state_fd = -1
        now = time.perf_counter_ns()
        for ident, run in self.runs.items():
            run.close(self.cpu_ns(ident), now)
        self.runs.clear()


# ---------------------------------------------------------------------------------------------------------
# Main-thread sampling from a SIGPROF handler


def _schedstat(tid: int) -> tuple[int, int] | None:
    """(ns on a CPU, ns runnable waiting for a CPU) of thread `tid` of this process (Linux), or None."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat", "rb") as stat:
            run, queued = stat.read().split()[:2]
        return int(run), int(queued)
    except (OSError, ValueError):
        return None


_SIGNAL_INSTALL_WAIT_S = 0.05
"""How long a profile waits for the main thread to install the SIGPROF handler before sampling without it."""

_signal_lock = threading.Lock()
_signal_session: _SignalSession | None = None
"""The session whose handler is installed or queued; None when SIGPROF is entirely the app's again."""

_pending_callback: Any = None
"""The ctypes callback given to Py_AddPendingCall: created once and kept forever (a queued call must never
outlive it)."""
_pending_work: list[Callable[[], None]] = []


def _run_pending(_arg: Any) -> int:
    """Runs in the main thread (Py_AddPendingCall): do the queued work; never raise into the interpreter."""
    with _signal_lock:
        work = list(_pending_work)
        _pending_work.clear()
    for item in work:
        try:
            item()
        except Exception:  # a pending call must not raise into the app's main thread
            _log_signal_failure()
    return 0


def _log_signal_failure() -> None:
    import logging

    logging.getLogger("perftop").warning("perftop: main-thread profiling hook failed", exc_info=True)


def _queue_in_main(work: Callable[[], None]) -> bool:
    """Run `work` in the main thread at its next bytecode check (Py_AddPendingCall); False if impossible."""
    global _pending_callback
    try:
        import ctypes
    except ImportError:
        return False
    api = getattr(ctypes, "pythonapi", None)
    add = getattr(api, "Py_AddPendingCall", None)
    if add is None:
        return False
    if _pending_callback is None:
        _pending_callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)(_run_pending)
    with _signal_lock:
        _pending_work.append(work)
    add.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    add.restype = ctypes.c_int
    if add(ctypes.cast(_pending_callback, ctypes.c_void_p), None) != 0:
        with _signal_lock:
            if work in _pending_work:
                _pending_work.remove(work)
        return False
    return True


def _after_fork_in_child() -> None:
    """A child forked during a profile inherits the handler but no timer: give SIGPROF back to the app."""
    global _signal_session
    session = _signal_session
    if session is None:
        return
    session.state = "stopped"
    _signal_session = None
    _pending_work.clear()
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGPROF) is _on_sigprof
    ):
        signal.signal(signal.SIGPROF, signal.SIG_DFL)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _on_sigprof(signum: int, frame: FrameType | None) -> None:
    """SIGPROF handler (runs in the main thread, which is the thread that was interrupted)."""
    session = _signal_session
    if session is not None and frame is not None:
        session.record(frame)


_CLOCK_THREAD_CPUTIME_ID = 3
_SIGEV_THREAD_ID = 4


class _ThreadCpuTimer:
    """A POSIX timer on the calling thread's CPU clock that sends SIGPROF to that thread only (Linux).

    ITIMER_PROF counts the whole process's CPU and signals whichever thread is running: when that is not the
    main thread, the main thread handles the signal only after its current wait, and charges CPU time spent
    before the wait to the wait. This timer expires only while the main thread itself runs, and signals it.
    """

    def __init__(self, libc: Any, timer: Any) -> None:
        self.libc = libc
        self.timer = timer

    @staticmethod
    def start(tid: int, interval_s: float) -> _ThreadCpuTimer | None:
        """Create and arm the timer for the calling thread (`tid`); None where that is not possible."""
        if not sys.platform.startswith("linux"):
            return None
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            create = libc.timer_create
        except (ImportError, OSError, AttributeError):
            return None

        class SigEvent(ctypes.Structure):
            """struct sigevent: value, signo, notify, then a union whose first int is the thread id."""

            _fields_ = (
                ("value", ctypes.c_void_p),
                ("signo", ctypes.c_int),
                ("notify", ctypes.c_int),
                ("tid", ctypes.c_int),
                ("pad", ctypes.c_int * 11),
            )

        class TimeSpec(ctypes.Structure):
            _fields_ = (("sec", ctypes.c_long), ("nsec", ctypes.c_long))

        class ITimerSpec(ctypes.Structure):
            _fields_ = (("interval", TimeSpec), ("value", TimeSpec))

        event = SigEvent(None, signal.SIGPROF, _SIGEV_THREAD_ID, tid)
        timer = ctypes.c_void_p()
        create.argtypes = (ctypes.c_int, ctypes.POINTER(SigEvent), ctypes.POINTER(ctypes.c_void_p))
        if create(_CLOCK_THREAD_CPUTIME_ID, ctypes.byref(event), ctypes.byref(timer)) != 0:
            return None
        made = _ThreadCpuTimer(libc, timer)
        nanos = max(1000, int(interval_s * 1e9))
        every = TimeSpec(nanos // 1_000_000_000, nanos % 1_000_000_000)
        settime = libc.timer_settime
        settime.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ITimerSpec), ctypes.c_void_p)
        if settime(timer, 0, ctypes.byref(ITimerSpec(every, every)), None) != 0:
            made.delete()
            return None
        return made

    def delete(self) -> None:
        """Disarm and free the timer (from any thread)."""
        self.libc.timer_delete(self.timer)


class _SignalSession:
    """Samples the main thread from a SIGPROF handler that runs in the main thread itself.

    A sampler thread only runs when the app thread lets go of the GIL, which it does at blocking calls: its
    samples land on waits and miss short bursts of Python. The kernel's ITIMER_PROF timer instead sends
    SIGPROF while the process uses CPU, and CPython runs the handler in the main thread at its next bytecode:
    right where the main thread is computing. Each handler call charges the main thread's CPU time since the
    previous one to the stack it interrupted. The rest of the wall time is placed by `_entries`, from the
    thread's scheduler statistics and where the sampler thread saw it waiting. Installed only where the app
    has no SIGPROF handler and no ITIMER_PROF timer of its own, with SA_RESTART, and removed after.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.stacks: dict[tuple[int, ...], list[Any]] = {}
        self.dropped_ns = 0
        self.installed = threading.Event()
        self.state = "queued"
        self.tid = 0
        self.last = 0
        self.timer: _ThreadCpuTimer | None = None
        self.sched_start: tuple[int, int] | None = None
        self.sched_end: tuple[int, int] | None = None
        self.signals = 0
        self.started_at = 0.0
        self.wall_s = 0.0
        self.own_codes: frozenset[Any] = frozenset((_on_sigprof.__code__, _SignalSession.record.__code__))

    @staticmethod
    def available() -> str | None:
        """Why the main thread cannot be sampled with signals here, or None if it can."""
        if not hasattr(signal, "setitimer") or not hasattr(signal, "SIGPROF"):
            return "this platform has no ITIMER_PROF"
        if threading.current_thread() is threading.main_thread():
            return "the profile runs in the main thread"
        if not threading.main_thread().is_alive():
            return "the main thread has exited"
        if _signal_session is not None:
            return "another profile's SIGPROF handler is still installed"
        if signal.getsignal(signal.SIGPROF) not in (signal.SIG_DFL, None):
            return "the app has its own SIGPROF handler"
        if signal.getitimer(signal.ITIMER_PROF) != (0.0, 0.0):
            return "the app uses the ITIMER_PROF timer"
        return None

    def start(self) -> bool:
        """Queue the handler's installation in the main thread; False if that cannot be done at all."""
        global _signal_session
        with _signal_lock:
            if _signal_session is not None:
                return False
            _signal_session = self
        if not _queue_in_main(self._install):
            with _signal_lock:
                _signal_session = None
            return False
        return True

    def _install(self) -> None:
        """Main thread: install the handler and arm the timer, unless the profile gave up meanwhile."""
        if self.state != "queued":
            return
        if signal.getsignal(signal.SIGPROF) not in (signal.SIG_DFL, None) or signal.getitimer(
            signal.ITIMER_PROF
        ) != (0.0, 0.0):
            self.state = "refused"
            return
        self.tid = threading.get_native_id()
        self.sched_start = _schedstat(self.tid)
        self.last = time.thread_time_ns()
        signal.signal(signal.SIGPROF, _on_sigprof)
        signal.siginterrupt(signal.SIGPROF, False)
        self.state = "active"
        self.started_at = time.perf_counter()
        self.timer = _ThreadCpuTimer.start(self.tid, self.interval_s)
        if self.timer is None:
            signal.setitimer(signal.ITIMER_PROF, self.interval_s, self.interval_s)
        self.installed.set()

    def record(self, frame: FrameType) -> None:
        """Charge the main thread's busy time since the last call to the stack ending at `frame`."""
        if self.state != "active":
            return
        now = time.thread_time_ns()
        delta = now - self.last
        self.last = now
        self.signals += 1
        if delta <= 0:
            return
        key: list[int] = []
        codes: list[Any] = []
        current: FrameType | None = frame
        while current is not None and current.f_code in self.own_codes:
            current = current.f_back  # a signal handled while this handler ran
        while current is not None:
            if len(codes) == MAX_DEPTH:
                codes.append(_TRUNCATED)
                break
            code = current.f_code
            codes.append(code)
            key.append(id(code))
            key.append(current.f_lasti)
            current = current.f_back
        entry = tuple(key)
        cell = self.stacks.get(entry)
        if cell is None:
            if len(self.stacks) >= MAX_STACKS:
                self.dropped_ns += delta
                return
            cell = self.stacks[entry] = [tuple(codes), 0]
        cell[1] += delta

    def split(self) -> tuple[float, float, float]:
        """The main thread's (CPU, runnable waiting for a CPU, blocked) seconds during the session.

        From /proc schedstat where readable; else the CPU time the handler charged, and no runnable time.
        """
        start, end = self.sched_start, self.sched_end
        if start is not None and end is not None:
            run, queued = (end[0] - start[0]) / 1e9, (end[1] - start[1]) / 1e9
        else:
            run, queued = sum(cell[1] for cell in self.stacks.values()) / 1e9, 0.0
        return run, queued, max(0.0, self.wall_s - run - queued)

    def stop(self) -> None:
        """Disarm the timer, stop recording and queue the handler's removal in the main thread."""
        global _signal_session
        was_active = self.state == "active"
        self.state = "stopped"
        if was_active:
            self.wall_s = time.perf_counter() - self.started_at
            self.sched_end = _schedstat(self.tid)
            if self.timer is not None:
                self.timer.delete()
            else:
                signal.setitimer(signal.ITIMER_PROF, 0.0, 0.0)
            if not _queue_in_main(self._uninstall):
                self._forget()
        else:
            with _signal_lock:
                if _signal_session is self:
                    _signal_session = None

    def _uninstall(self) -> None:
        """Main thread: put SIGPROF back to the default if our handler is still the one installed.

        Queued after the timer was disarmed: CPython handles tripped signals before pending calls, so no
        SIGPROF is left for a handler that is gone.
        """
        if signal.getsignal(signal.SIGPROF) is _on_sigprof:
            signal.signal(signal.SIGPROF, signal.SIG_DFL)
        self._forget()

    def _forget(self) -> None:
        global _signal_session
        with _signal_lock:
            if _signal_session is self:
                _signal_session = None


_PAUSE_CHUNK_S = 0.1


def _pause(seconds: float, cancel: threading.Event) -> bool:
    """Sleep `seconds` (in chunks of at most 0.1 s) unless cancelled; True if cancelled.

    `time.sleep` is C-level: waking up costs the app less GIL time than `Event.wait`, which runs Python code.
    """
    end = time.perf_counter() + seconds
    while True:
        if cancel.is_set():
            return True
        left = end - time.perf_counter()
        if left <= 0:
            return False
        time.sleep(min(left, _PAUSE_CHUNK_S))


def sample_profile(
    seconds: float,
    hz: float,
    cancel: threading.Event,
    selection: ThreadFilter,
    include_idle: bool = False,
    use_signal: bool = True,
) -> dict[str, Any]:
    """Sample every selected thread `hz` times a second for `seconds` (or until `cancel`), then summarise.

    The main thread, where selected, is sampled from a SIGPROF handler when `use_signal` and the app leaves
    SIGPROF alone (see _SignalSession); other threads, and the main thread otherwise, from this thread. The
    schedule is jittered so that a target whose period divides the sampling interval is not seen in one phase.
    """
    sampler = _Sampler(selection)
    sampler.refresh_threads(sys._current_frames())
    interval = 1.0 / hz
    session, main_note = _start_signal_session(selection, interval, use_signal)
    jitter = random.Random()
    clock = time.perf_counter
    start = clock()
    deadline = start + seconds
    tick = 0
    missed = 0
    cancelled = False
    try:
        while True:
            if session is not None and sampler.signal_ident is None and session.installed.is_set():
                main_ident = threading.main_thread().ident
                if main_ident is not None:
                    sampler.use_signal(main_ident, session.own_codes, session.tid)
            sampler.sample()
            now = clock()
            if now >= deadline:
                break
            tick += 1
            due = start + (tick + jitter.uniform(-0.4, 0.4)) * interval
            if due <= now:
                # Behind schedule (GIL hand-over, slow sample): skip the ticks that are gone, don't bunch up.
                caught_up = int((now - start) / interval) + 1
                missed += caught_up - tick
                tick = caught_up
                due = start + tick * interval
            if due >= deadline:
                cancelled = _pause(deadline - now, cancel)
                break
            if _pause(due - now, cancel):
                cancelled = True
                break
            if sampler.ticks % 256 == 0:
                sampler.refresh_threads(sys._current_frames())
        end = clock()
        sampler.finish()
    finally:
        sampler.runs.clear()
        if session is not None:
            session.stop()
    if session is not None and sampler.signal_ident is None:
        main_note = "the main thread did not run Python code to install the SIGPROF handler (it was waiting)"
    used = session if sampler.signal_ident is not None else None
    result = _summarise(sampler, include_idle, used)
    main_mode: str | None = None
    if sampler.signal_ident is not None:
        main_mode = "signal"
    elif _main_selected(selection):
        main_mode = "thread"
    result.update(
        {
            "sampler": "in-process",
            "main_thread_sampling": main_mode,
            "main_thread_note": main_note,
            "main_thread_signal": None
            if used is None
            else {
                "signals": used.signals,
                "seconds": round(used.wall_s, 6),
                **dict(
                    zip(
                        ("cpu_seconds", "runnable_seconds", "blocked_seconds"),
                        (round(part, 6) for part in used.split()),
                        strict=True,
                    )
                ),
            },
            "notes": _profile_notes(main_mode, result),
            "seconds": round(end - start, 6),
            "requested_seconds": seconds,
            "hz": hz,
            "effective_hz": round(sampler.ticks / (end - start), 3) if end > start else 0.0,
            "ticks": sampler.ticks,
            "missed_ticks": missed,
            "dropped_samples": sampler.dropped,
            "cancelled": cancelled,
            "include_idle": include_idle,
            "build_ms": round((clock() - end) * 1000.0, 3),
        }
    )
    return result


def _main_selected(selection: ThreadFilter) -> bool:
    main = threading.main_thread()
    return (
        main.ident is not None
        and main.ident != threading.get_ident()
        and not main.name.startswith(PERFTOP_THREAD_PREFIX)
        and selection.wants(main.ident, main.name)
    )


def _start_signal_session(
    selection: ThreadFilter, interval: float, use_signal: bool
) -> tuple[_SignalSession | None, str | None]:
    """A started signal session for the main thread, or None and why not (None when main is not profiled)."""
    if not _main_selected(selection):
        return None, None
    if not use_signal:
        return None, "signal sampling was switched off for this profile"
    reason = _SignalSession.available()
    if reason is not None:
        return None, reason
    session = _SignalSession(interval)
    if not session.start():
        return None, "Py_AddPendingCall is not available to install the SIGPROF handler"
    session.installed.wait(_SIGNAL_INSTALL_WAIT_S)
    return session, None


def _profile_notes(main_mode: str | None, result: dict[str, Any]) -> list[str]:
    """Plain statements of what this profile cannot see, for the pane and the JSON."""
    notes: list[str] = []
    if main_mode == "thread":
        notes.append(
            "The main thread was sampled from another thread, which only runs when the main thread lets go "
            "of the GIL (mostly at blocking calls): short bursts of Python work in it are under-counted and "
            "its waits over-counted."
        )
    others = [t for t in result.get("threads", []) if not t.get("main")]
    if others:
        notes.append(
            "Threads other than the main thread are sampled from a thread: Python bursts shorter than a few "
            "milliseconds between blocking calls are under-counted there (py-spy has no such bias)."
        )
    notes.append(
        "Time in a C extension that holds the GIL is charged to the Python line that called it, as py-spy "
        "without --native does; the in-process sampler sees it only once the call returns."
    )
    return notes


class _Resolver:
    """Turns code objects and offsets into names, files and lines, caching everything it computes."""

    def __init__(self) -> None:
        self.stdlib = os.path.dirname(threading.__file__) + os.sep
        self.functions: dict[Any, tuple[str, str, int]] = {}
        self.lines: dict[tuple[Any, int], int] = {}
        self.line_tables: dict[CodeType, tuple[list[int], list[int | None]]] = {}
        self.instructions: dict[CodeType, tuple[list[int], list[dis.Instruction]]] = {}
        self.idle: dict[tuple[Any, int], bool] = {}
        self.short: dict[str, str] = {}
        # sys.path entries, longest first, to shorten file names in labels (no filesystem access).
        self.roots = sorted(
            {os.path.join(os.path.abspath(p), "") for p in sys.path if isinstance(p, str) and p},
            key=len,
            reverse=True,
        )

    def function(self, code: Any) -> tuple[str, str, int]:
        """(qualified name, file, first line) of a code object."""
        info = self.functions.get(code)
        if info is None:
            if isinstance(code, CodeType):
                name = getattr(code, "co_qualname", code.co_name)
                info = (name, code.co_filename, code.co_firstlineno)
            else:
                info = (str(code), "", 0)
            self.functions[code] = info
        return info

    def line(self, code: Any, offset: int) -> int:
        """The source line executing at bytecode `offset` of `code`."""
        key = (code, offset)
        line = self.lines.get(key)
        if line is None:
            line = self._line(code, offset)
            self.lines[key] = line
        return line

    def _line(self, code: Any, offset: int) -> int:
        if not isinstance(code, CodeType):
            return 0
        table = self.line_tables.get(code)
        if table is None:
            starts: list[int] = []
            numbers: list[int | None] = []
            for begin, _end, number in code.co_lines():
                starts.append(begin)
                numbers.append(number)
            table = (starts, numbers)
            self.line_tables[code] = table
        index = bisect.bisect_right(table[0], offset) - 1
        if index < 0:
            return code.co_firstlineno
        number = table[1][index]
        return code.co_firstlineno if number is None else number

    def short_file(self, path: str) -> str:
        """`path` relative to the sys.path entry it lives under, for compact frame labels."""
        short = self.short.get(path)
        if short is None:
            short = path
            for root in self.roots:
                if path.startswith(root):
                    short = path[len(root) :]
                    break
            self.short[path] = short
        return short

    def label(self, code: Any) -> str:
        """`function (file:line)`, safe for folded stacks (no ';' nor newline)."""
        name, path, line = self.function(code)
        text = f"{name} ({self.short_file(path)}:{line})" if path else name
        return text.replace(";", ",").replace("\n", " ")

    def is_idle(self, code: Any, offset: int) -> bool:
        """Whether a thread whose innermost frame is at (code, offset) is waiting rather than computing."""
        key = (code, offset)
        idle = self.idle.get(key)
        if idle is None:
            idle = self._is_idle(code, offset)
            self.idle[key] = idle
        return idle

    def _is_idle(self, code: Any, offset: int) -> bool:
        if not isinstance(code, CodeType):
            return False
        path = code.co_filename
        if path.startswith(self.stdlib):
            relative = path[len(self.stdlib) :].replace(os.sep, "/")
            if (relative, code.co_name) in _WAIT_FUNCTIONS:
                return True
        callee = self.callee(code, offset)
        return callee is not None and callee in _BLOCKING_CALLS

    def callee(self, code: CodeType, offset: int) -> str | None:
        """The name of the function a frame stopped at `offset` is calling, when it can be read statically."""
        found = self.instructions.get(code)
        if found is None:
            instructions = list(dis.get_instructions(code))
            found = ([ins.offset for ins in instructions], instructions)
            self.instructions[code] = found
        offsets, instructions = found
        index = bisect.bisect_right(offsets, offset) - 1
        if index < 0 or instructions[index].opname not in _CALL_OPS:
            return None
        call = instructions[index]
        if sys.version_info >= (3, 11):
            by_position = _callee_by_position(instructions, index)
            if by_position is not None:
                return by_position
        return _callee_by_stack(instructions, index, call)


def _callee_by_position(instructions: list[dis.Instruction], index: int) -> str | None:
    """Find the name load whose source span is the callee expression (same start as the call, longest)."""
    call_pos = instructions[index].positions
    if call_pos is None or call_pos.lineno is None or call_pos.col_offset is None:
        return None
    best: dis.Instruction | None = None
    best_end: tuple[int, int] = (-1, -1)
    for ins in instructions[max(0, index - 64) : index]:
        pos = ins.positions
        if pos is None or pos.lineno != call_pos.lineno or pos.col_offset != call_pos.col_offset:
            continue
        end = (pos.end_lineno or 0, pos.end_col_offset or 0)
        if ins.opname in _LOAD_OPS and end > best_end:
            best, best_end = ins, end
    if best is None or not isinstance(best.argval, str):
        return None
    return best.argval


def _callee_by_stack(instructions: list[dis.Instruction], index: int, call: dis.Instruction) -> str | None:
    """Walk back over the call's arguments by stack effect to the instruction that loaded the callable."""
    argc = call.arg or 0
    if call.opname == "CALL_FUNCTION_EX":
        need = 1 + (argc & 1)
    elif call.opname in ("CALL_KW", "CALL_FUNCTION_KW"):
        need = argc + 1
    else:
        need = argc
    depth = 0
    position = index - 1
    while position >= 0 and instructions[position].opname in ("PRECALL", "KW_NAMES", "CACHE"):
        position -= 1
    while position >= 0:
        ins = instructions[position]
        try:
            effect = dis.stack_effect(ins.opcode, ins.arg if ins.opcode >= dis.HAVE_ARGUMENT else None)
        except ValueError:
            return None
        depth += effect
        if depth > need:
            if ins.opname in _LOAD_OPS and isinstance(ins.argval, str):
                return ins.argval
            return None
        position -= 1
    return None


def _entries(
    sampler: _Sampler, resolver: _Resolver, session: _SignalSession | None
) -> Iterator[tuple[int, int, tuple[Any, ...], int, int]]:
    """(thread, innermost offset, codes innermost first, samples, idle samples) of every sampled stack.

    With a signal session, the main thread's samples are rebuilt from its wall time, in as many samples as
    the sampler thread took meanwhile: its CPU time plus the time it was runnable after a preemption, where
    the handler found it computing; the time it was runnable after a wake-up (active for py-spy, at the
    wait it woke from) and the time it was blocked (idle), where the sampler thread saw it waiting. The
    sampler thread's own samples of it are no measure of where the time went: it gets the GIL mostly while
    the main thread waits.
    """
    observed: list[tuple[tuple[int, ...], _Cell, int]] = []
    for (ident, key), cell in sampler.counts.items():
        codes = cell.codes
        static_idle = bool(codes) and resolver.is_idle(codes[0], key[1])
        idle = cell.count if static_idle else min(cell.stalled, cell.count)
        if session is not None and ident == sampler.signal_key:
            observed.append((key, cell, idle))
            continue
        yield ident, key[1], codes, cell.count, idle
    if session is None or sampler.signal_ident is None:
        return
    weights: list[tuple[tuple[int, ...], tuple[Any, ...], float, bool]] = []
    # As many samples as the sampler thread took of the other threads meanwhile (it may miss ticks).
    ticks = sum(cell.count for _key, cell, _idle in observed)
    scale = ticks / session.wall_s if session.wall_s > 0 else 0.0
    run, queued, blocked = (seconds * scale for seconds in session.split())
    # Seen at a wait: runnable (woken, not yet on a CPU; py-spy counts that as active there) or blocked. The
    # sampler thread sees the main thread at waits without bias, since it gets the GIL then.
    at_waits = [(key, cell) for key, cell, idle in observed if idle and cell.count]
    seen = sum(cell.count for _key, cell in at_waits)
    fraction = sum(min(cell.runnable, cell.count) for _key, cell in at_waits) / seen if seen else 0.0
    woken = min(queued, blocked * fraction / (1.0 - fraction)) if fraction < 1.0 else queued
    busy = run + queued - woken
    charged = sum(cell[1] for cell in session.stacks.values())
    for key, (codes, ns) in session.stacks.items():
        weights.append((key, codes, busy * ns / charged, False))
    if not charged:
        blocked += busy
    if not at_waits:
        at_waits = [(key, cell) for key, cell, _idle in observed if cell.count]
        seen = sum(cell.count for _key, cell in at_waits)
    for key, cell in at_waits:
        share = cell.count / seen
        weights.append((key, cell.codes, woken * share, False))
        weights.append((key, cell.codes, blocked * share, True))
    for (key, codes, _weight, is_idle), count in zip(
        weights, _apportion([w[2] for w in weights]), strict=True
    ):
        if count:
            yield sampler.signal_ident, key[1], codes, count, count if is_idle else 0


def _apportion(weights: list[float]) -> list[int]:
    """Whole numbers summing to the rounded total of `weights`, each within 1 of its weight."""
    floors = [int(w) for w in weights]
    left = round(sum(weights)) - sum(floors)
    order = sorted(range(len(weights)), key=lambda i: floors[i] - weights[i])
    for i in order[: max(0, left)]:
        floors[i] += 1
    return floors


def _summarise(
    sampler: _Sampler, include_idle: bool, session: _SignalSession | None = None
) -> dict[str, Any]:
    """Build every view of the profile from the aggregated stack counts."""
    resolver = _Resolver()
    names = sampler.names
    thread_samples: dict[int, int] = {}
    thread_idle: dict[int, int] = {}
    self_counts: dict[tuple[str, str, int], int] = {}
    total_counts: dict[tuple[str, str, int], int] = {}
    line_counts: dict[tuple[str, int], int] = {}
    folded: dict[str, int] = {}
    total = 0
    idle_total = 0
    # Per thread: resolved root-first label tuples -> count (shared by folded, tree and speedscope).
    per_thread: dict[int, dict[tuple[str, ...], int]] = {}
    label_info: dict[str, tuple[str, str, int]] = {}
    for ident, offset, codes, count, idle in _entries(sampler, resolver, session):
        total += count
        thread_samples[ident] = thread_samples.get(ident, 0) + count
        if idle:
            idle_total += idle
            thread_idle[ident] = thread_idle.get(ident, 0) + idle
        labels: list[str] = []
        for code in reversed(codes):
            if code == _TRUNCATED:
                labels.append(_TRUNCATED)
                continue
            label = resolver.label(code)
            if label not in label_info:
                label_info[label] = resolver.function(code)
            labels.append(label)
        stacks = per_thread.setdefault(ident, {})
        path = tuple(labels)
        stacks[path] = stacks.get(path, 0) + count
        active = count if include_idle else count - idle
        if not active:
            continue
        if codes and codes[0] != _TRUNCATED:
            func = resolver.function(codes[0])
            self_counts[func] = self_counts.get(func, 0) + active
            if func[1]:
                where = (func[1], resolver.line(codes[0], offset))
                line_counts[where] = line_counts.get(where, 0) + active
        for func in {resolver.function(code) for code in codes if code != _TRUNCATED}:
            total_counts[func] = total_counts.get(func, 0) + active

    def thread_label(ident: int) -> str:
        name = names.get(ident, (f"Thread-{ident}", None))[0]
        return name.replace(";", ",").replace("\n", " ") or f"Thread-{ident}"

    for ident, stacks in per_thread.items():
        prefix = thread_label(ident)
        for path, count in stacks.items():
            line = ";".join((prefix, *path))
            folded[line] = folded.get(line, 0) + count

    def top_rows(order: dict[tuple[str, str, int], int]) -> list[dict[str, Any]]:
        ranked = sorted(order, key=lambda f: (-order[f], -total_counts.get(f, 0), f))[:TOP_N]
        return [
            {
                "function": f[0],
                "file": f[1],
                "line": f[2],
                "self_samples": self_counts.get(f, 0),
                "total_samples": total_counts.get(f, 0),
            }
            for f in ranked
        ]

    lines_ranked = sorted(line_counts, key=lambda w: (-line_counts[w], w))[:TOP_N]
    main_ident = threading.main_thread().ident
    threads = [
        {
            "name": names.get(ident, (f"Thread-{ident}", None))[0],
            "ident": ident,
            "native_id": names.get(ident, ("", None))[1],
            "samples": thread_samples[ident],
            "idle_samples": thread_idle.get(ident, 0),
            "main": ident == main_ident,
        }
        for ident in sorted(thread_samples, key=lambda i: (-thread_samples[i], i))
    ]
    return {
        "samples": total,
        "idle_samples": idle_total,
        "threads": threads,
        "top": top_rows(self_counts),
        "top_total": top_rows(total_counts),
        "lines": [{"file": w[0], "line": w[1], "samples": line_counts[w]} for w in lines_ranked],
        "folded": "".join(f"{line} {folded[line]}\n" for line in sorted(folded)),
        "tree": call_tree(per_thread, thread_label, label_info, total),
        "speedscope": speedscope(per_thread, thread_label, label_info),
    }


# ---------------------------------------------------------------------------------------------------------
# Deterministic profile (cProfile)

_exact_lock = threading.Lock()
_WAIT_SLICE = 0.05


RETIRE_GRACE_S = 1.0
"""How long a per-thread profiler is kept after its thread switched it off, before perftop frees it."""


class _ThreadProfile:
    """One thread's cProfile (Python < 3.12) and whether that thread has switched it off yet."""

    __slots__ = ("name", "profile", "removed", "removed_seen_at", "thread")

    def __init__(self, thread: threading.Thread, removed: list[bool]) -> None:
        self.name = thread.name
        self.thread = thread
        self.removed = removed
        self.removed_seen_at: float | None = None
        self.profile: cProfile.Profile | None = None

    def safe_to_free(self, now: float) -> bool:
        """Whether dropping our reference cannot free the profiler under its own thread's callback.

        A thread switches its profiler off from inside the profiler's callback; freeing it then would pull
        the object from under the running callback. So it is freed only once its thread is gone, or a grace
        period after the switch-off was first seen (the callback returns within microseconds).
        """
        if not self.thread.is_alive():
            return True
        if not self.removed[0]:
            return False
        if self.removed_seen_at is None:
            self.removed_seen_at = now
            return False
        return now - self.removed_seen_at >= RETIRE_GRACE_S


_retired: list[_ThreadProfile] = []
"""Per-thread profilers of finished sessions that may still be installed in their thread."""


def _prune_retired() -> None:
    now = time.monotonic()
    _retired[:] = [entry for entry in _retired if not entry.safe_to_free(now)]


class _PerThreadSession:
    """cProfile in each thread started during the window (Python < 3.12: nothing reaches running threads).

    Each new thread installs its own `cProfile.Profile` from a bootstrap hook. A Profile can only be switched
    off by its own thread, so its timer checks a stop flag and removes the profile function at the thread's
    first profiling event after the window: no profiler outlives the action. The Profile objects stay
    referenced here (then in `_retired`) until that has happened.
    """

    def __init__(self) -> None:
        self.stop_flag = [False]
        self.threads: list[_ThreadProfile] = []

    def timer(self, removed: list[bool]) -> Callable[[], float]:
        stop_flag = self.stop_flag
        clock = time.perf_counter
        setprofile = sys.setprofile

        def profile_timer() -> float:
            if stop_flag[0] and not removed[0]:
                removed[0] = True
                setprofile(None)
            return clock()

        return profile_timer

    def bootstrap(self, frame: FrameType, event: str, arg: Any) -> None:
        """Profile hook run once in each new thread: replace itself with a per-thread cProfile."""
        sys.setprofile(None)
        if self.stop_flag[0]:
            return
        current = threading.current_thread()
        if current.name.startswith(PERFTOP_THREAD_PREFIX):
            return
        removed = [False]
        entry = _ThreadProfile(current, removed)
        profile = cProfile.Profile(self.timer(removed))
        entry.profile = profile
        self.threads.append(entry)
        profile.enable()


def exact_profile(seconds: float, cancel: threading.Event, top: int, sort: str) -> dict[str, Any]:
    """Profile every thread that can be reached with cProfile for `seconds`; always switch it off after."""
    if not _exact_lock.acquire(blocking=False):
        raise ProfilerBusy("a deterministic profile is already running")
    try:
        if sys.version_info >= (3, 12):
            return _exact_monitoring(seconds, cancel, top, sort)
        return _exact_per_thread(seconds, cancel, top, sort)
    finally:
        _exact_lock.release()


def _app_thread_names() -> list[str]:
    own = threading.get_ident()
    return sorted(
        t.name
        for t in threading.enumerate()
        if t.ident != own and not t.name.startswith(PERFTOP_THREAD_PREFIX)
    )


def _exact_monitoring(seconds: float, cancel: threading.Event, top: int, sort: str) -> dict[str, Any]:
    """Python 3.12+: cProfile uses sys.monitoring, which covers every thread of the interpreter.

    That includes this thread, so it waits in C-level sleeps of known count and duration, whose calls are
    then taken out of the statistics (they are the agent's, not the app's).
    """
    before = set(_app_thread_names())
    profile = cProfile.Profile()
    slices = max(1, int(seconds / _WAIT_SLICE + 0.999999))
    slice_s = seconds / slices
    sleep = time.sleep
    is_set = cancel.is_set
    sleeps = 0
    checks = 0
    try:
        profile.enable()
    except ValueError as exc:
        raise ProfilerBusy(f"another profiler is active in this process ({exc})") from exc
    start = time.perf_counter()
    try:
        for _ in range(slices):
            checks += 1
            if is_set():
                break
            sleeps += 1
            sleep(slice_s)
    finally:
        profile.disable()
    elapsed = time.perf_counter() - start
    cancelled = cancel.is_set()
    own_calls = {
        _Resolver().function(threading.Event.is_set.__code__): (checks, 0.0),
        ("<built-in method time.sleep>", "", 0): (sleeps, elapsed),
    }
    covered = sorted(before | set(_app_thread_names()))
    rows, calls = _exact_rows([profile.getstats()], top, sort, own_calls)
    return {
        "seconds": round(elapsed, 6),
        "requested_seconds": seconds,
        "cancelled": cancelled,
        "mode": "sys.monitoring",
        "cumulative_reliable": len(covered) <= 1,
        "threads_covered": covered,
        "threads_not_covered": [],
        "total_calls": calls,
        "top": rows,
        "overhead_note": (
            "cProfile traced every call in every thread while it ran (typically 1.5-3x slower for call-heavy "
            "code). On Python 3.12+ one profiler receives the calls of all threads: with several threads "
            "running, call counts are exact, own times (total_ms) approximate, and cumulative_ms can be "
            "wrong (call stacks of threads get mixed). Profiling is switched off now."
        ),
    }


def _exact_per_thread(seconds: float, cancel: threading.Event, top: int, sort: str) -> dict[str, Any]:
    """Python < 3.12: only threads started during the window can be profiled (see _PerThreadSession)."""
    existing = _app_thread_names()
    _prune_retired()
    previous_hook = threading.getprofile()
    if previous_hook is not None:
        raise ProfilerBusy(
            f"the app has its own threading.setprofile hook ({previous_hook!r}); not replacing it"
        )
    session = _PerThreadSession()
    threading.setprofile(session.bootstrap)
    start = time.perf_counter()
    try:
        cancelled = cancel.wait(seconds)
    finally:
        threading.setprofile(None)
        session.stop_flag[0] = True
    elapsed = time.perf_counter() - start
    entries = list(session.threads)
    _retired.extend(entries)
    rows, calls = _exact_rows([e.profile.getstats() for e in entries if e.profile is not None], top, sort)
    _prune_retired()
    covered = sorted(e.name for e in entries)
    return {
        "seconds": round(elapsed, 6),
        "requested_seconds": seconds,
        "cancelled": cancelled,
        "mode": "per-thread",
        "cumulative_reliable": True,
        "threads_covered": covered,
        "threads_not_covered": existing,
        "total_calls": calls,
        "top": rows,
        "overhead_note": (
            f"Python {sys.version_info[0]}.{sys.version_info[1]} cannot install a profiler on threads that "
            "are already running (the main thread included): only threads started during the profile were "
            "covered. Use the sampling 'profile' action for running threads. cProfile slows the threads it "
            "covers (typically 2-4x for call-heavy code); each switches it off at its next call."
        ),
    }


def _exact_rows(
    stats: list[Any],
    top: int,
    sort: str,
    own_calls: dict[tuple[str, str, int], tuple[int, float]] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Merge cProfile stats of several profilers by function, minus the agent's own calls, and rank them.

    `own_calls` maps a function to the (calls, seconds) the agent itself spent in it while profiling.
    """
    merged: dict[tuple[str, str, int], list[float]] = {}
    own_dir = os.path.dirname(os.path.abspath(__file__)) + os.sep
    resolver = _Resolver()
    calls = 0
    for entries in stats:
        for entry in entries:
            name, path, line = resolver.function(entry.code)
            if path.startswith(own_dir) or "_lsprof.Profiler" in name:
                continue
            key = (name, path, line)
            row = merged.get(key)
            if row is None:
                row = merged[key] = [0, 0.0, 0.0]
            row[0] += entry.callcount
            row[1] += entry.inlinetime
            row[2] += entry.totaltime
            calls += entry.callcount
    for key, (own_count, own_seconds) in (own_calls or {}).items():
        row = merged.get(key)
        if row is None:
            continue
        row[0] -= own_count
        row[1] = max(0.0, row[1] - own_seconds)
        row[2] = max(0.0, row[2] - own_seconds)
        calls -= own_count
        if row[0] <= 0:
            del merged[key]
    column = {"calls": 0, "total": 1, "cumulative": 2}[sort]
    ranked = sorted(merged, key=lambda k: (-merged[k][column], k))[:top]
    rows = [
        {
            "function": key[0],
            "file": key[1],
            "line": key[2],
            "calls": int(merged[key][0]),
            "total_ms": round(merged[key][1] * 1000.0, 3),
            "cumulative_ms": round(merged[key][2] * 1000.0, 3),
        }
        for key in ranked
    ]
    return rows, calls


def _new_exact_lock_in_child() -> None:
    """A child forked while the parent ran an exact profile must not answer "busy" forever."""
    global _exact_lock
    _exact_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_exact_lock_in_child)
