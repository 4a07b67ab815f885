"""The agent's one thread, "perftop-agent": periodic tasks, fork hooks and exit hooks. Standard library only.

Everything the agent does off the app's threads registers here instead of running a thread of its own:
the recorder's drain (a few times a second, first, whatever else fails), the SQL hook's aggregation, the
loop watcher's discovery, tracemalloc's lease and the socket server's housekeeping. Between tasks the
thread waits in the socket server's selector once one is serving (`set_waiter`), so a viewer's request
is answered at once, and on a plain event before that. Recording starts the thread on its first metric,
so what is recorded before `start()` stays drained and bounded.

A fork runs the registered hooks: before it, imports the thread makes lazily are let finish and the
agent's locks are taken (so the child starts from consistent state); in the child, each module resets
its state and the thread starts again if a hook asks for it. At interpreter exit the exit hooks run
(a worker's final stats, the socket file) and the thread stops.

This is the lowest agent module: it imports no other agent module but `threads` (for thread names), so
every other one may register with it. Nothing here raises into the app: failures are logged once.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Protocol

from perftop.agent.threads import refresh_native_id, set_native_thread_name

log = logging.getLogger("perftop")

TICK_S = 0.2
"""How often the recorder's buffers are aggregated, and the longest the thread waits when nothing is due."""
START_WAIT_S = 2.0
"""How long an app thread's first metric waits for an agent start under way (see `wait_started`)."""
FORK_LOCK_BUDGET_S = 0.5
"""How long a fork may wait, in all, for the agent's locks (held for microseconds unless something is
wrong): past it, the fork goes ahead and the child replaces the locks anyway."""
LAZY_MODULES = (
    "perftop.agent.actions",
    "perftop.agent.profiler",
    "perftop.agent.memory",
    "perftop.agent.loop",
    "perftop.agent.sqlalchemy",
    "perftop.agent.explain",
    "perftop.agent.fingerprint",
)
"""Modules the agent's threads import on first use: a child forked mid-import would wait on the module's
import lock forever (its holder does not exist in the child), so a fork first lets such an import finish."""

_logged: set[str] = set()
_logged_lock = threading.Lock()


def log_once(key: str, message: str, *, exc: BaseException | None = None) -> None:
    """Log `message` as a warning the first time `key` is seen in this process; later ones are silent."""
    try:
        with _logged_lock:
            if key in _logged:
                return
            _logged.add(key)
        log.warning("perftop: %s", message, exc_info=exc)
    except Exception:
        return  # logging itself failed; the app must not notice


class Waiter(Protocol):
    """What the thread blocks in between its tasks (the socket server's selector, once it serves)."""

    def wait(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for events and handle them."""

    def wake(self) -> None:
        """Make a `wait` in progress return now (from any thread)."""


@dataclass
class _Task:
    fn: Callable[[], object]
    interval: float
    next_at: float
    key: str
    message: str


@dataclass
class _ForkHook:
    locks: Callable[[], Iterable[threading.Lock]] | None
    before: Callable[[], None] | None
    in_child: Callable[[], None] | None


class Pump:
    """The agent thread and what it runs. One per process: `pump`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._quit = False
        self._event = threading.Event()
        self._tasks: list[_Task] = []
        self._soon: collections.deque[Callable[[], None]] = collections.deque()
        self._fork_hooks: list[_ForkHook] = []
        self._exit_hooks: list[Callable[[], None]] = []
        self._held_for_fork: list[threading.Lock] = []
        self._in_child_hooks = False
        self._start_after_hooks = False
        self._restart_hook = False
        self._starting = threading.RLock()
        """Held while `perftop.agent.start()` imports and starts the socket server."""
        self._fork_point: tuple[FrameType, int] | None = None
        """In a forked child: (frame, instruction) of the Python code that forked."""
        self.waiter: Waiter | None = None
        """Set by the socket server while it has a selector; read by the thread on every pass."""

    # -- registration, from any thread ----------------------------------------------------------------

    def every(
        self,
        interval: float,
        fn: Callable[[], object],
        key: str,
        message: str,
        *,
        first: bool = False,
        first_after: float | None = None,
    ) -> None:
        """Run `fn` on the agent thread every `interval` seconds (first: before the tasks registered so
        far); a failure is logged once under `key` and the task runs again next time."""
        delay = interval if first_after is None else first_after
        task = _Task(fn, interval, time.monotonic() + delay, key, message)
        with self._lock:
            if first:
                self._tasks.insert(0, task)
            else:
                self._tasks.append(task)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` once on the agent thread, before its next tasks."""
        self._soon.append(fn)
        self.wake()

    def on_fork(
        self,
        *,
        locks: Callable[[], Iterable[threading.Lock]] | None = None,
        before: Callable[[], None] | None = None,
        in_child: Callable[[], None] | None = None,
    ) -> None:
        """Hooks around a fork: `locks()` are taken before it (and given back in the parent; the child's
        `in_child` replaces them), `before` runs in the forking thread, `in_child` in the child, in the
        order registered."""
        self._fork_hooks.append(_ForkHook(locks, before, in_child))

    def on_exit(self, fn: Callable[[], None]) -> None:
        """Run `fn` at interpreter exit (or when a pool worker leaves through `run_exit_hooks`)."""
        self._exit_hooks.append(fn)

    # -- starting --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Held around an agent start (`perftop.agent.start()`), which `wait_started` waits for."""
        with self._starting:
            yield

    def wait_started(self) -> None:
        """Wait (at most START_WAIT_S) for an agent start under way in another thread, e.g. `perftop
        run`'s start-up thread: a short-lived worker (a pool's, recycled after a few tasks) is then served
        before its first metric returns, so it leaves its final stats when it exits."""
        if self._starting.acquire(timeout=START_WAIT_S):
            self._starting.release()

    # -- the thread ----------------------------------------------------------------------------------

    def ensure_running(self) -> None:
        """Start the agent thread if it is not running (in a forked child, once every hook has run)."""
        if self._in_child_hooks:
            self._start_after_hooks = True
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._quit = False
            self._thread = threading.Thread(target=self._run, name="perftop-agent", daemon=True)
            self._thread.start()
            if not self._restart_hook and hasattr(os, "register_at_fork"):
                # Registered now, not at import, so that it runs after the at-fork hooks of the modules
                # imported meanwhile (os.register_at_fork's own, such as routes'): their state is reset
                # in the child before its thread runs.
                os.register_at_fork(after_in_child=self._restart_in_child)
                self._restart_hook = True

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def wake(self) -> None:
        """Make the thread look at its work now (from any thread)."""
        self._event.set()
        waiter = self.waiter
        if waiter is not None:
            waiter.wake()

    def _run(self) -> None:
        set_native_thread_name("perftop-agent")
        while not self._quit:
            try:
                while self._soon:
                    self._soon.popleft()()
            except Exception as exc:
                log_once("agent-soon", "the agent thread could not run a deferred step", exc=exc)
            next_at = self._run_due(time.monotonic())
            timeout = max(0.0, next_at - time.monotonic())
            try:
                waiter = self.waiter
                if waiter is not None:
                    waiter.wait(timeout)
                elif self._event.wait(timeout):
                    self._event.clear()
            except Exception as exc:
                log_once("agent-loop", "the agent thread hit an error and carries on", exc=exc)
                time.sleep(TICK_S)

    def _run_due(self, now: float) -> float:
        """Run the tasks that are due, in order; when the next one is due (at most TICK_S from now)."""
        next_at = now + TICK_S
        for task in list(self._tasks):
            if now >= task.next_at:
                task.next_at = now + task.interval
                try:
                    task.fn()
                except Exception as exc:
                    log_once(task.key, task.message, exc=exc)
            next_at = min(next_at, task.next_at)
        return next_at

    # -- exit ----------------------------------------------------------------------------------------

    def run_exit_hooks(self) -> None:
        """The agent's exit work, then the thread stops: at interpreter exit, or from a pool worker about
        to leave through `os._exit` (which skips atexit)."""
        for fn in list(self._exit_hooks):
            try:
                fn()
            except Exception as exc:
                log_once("exit-hook", "the agent's exit work failed", exc=exc)
        self._quit = True
        self.wake()

    # -- fork ----------------------------------------------------------------------------------------

    def _before_fork(self) -> None:
        """Just before a fork, in the forking thread: let imports finish and take the agent's locks, so the
        child starts from consistent state; `_after_fork_in_parent` gives the locks back."""
        with contextlib.suppress(Exception):
            _settle_imports()
        deadline = time.monotonic() + FORK_LOCK_BUDGET_S
        locks: list[threading.Lock] = [self._lock]
        for hook in self._fork_hooks:
            if hook.locks is not None:
                with contextlib.suppress(Exception):
                    locks.extend(hook.locks())
        for lock in locks:
            try:
                if lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                    self._held_for_fork.append(lock)
            except Exception as exc:
                log_once("fork-lock", "could not take the agent's locks before a fork", exc=exc)
        for hook in self._fork_hooks:
            if hook.before is not None:
                with contextlib.suppress(Exception):
                    hook.before()

    def _after_fork_in_parent(self) -> None:
        while self._held_for_fork:
            with contextlib.suppress(RuntimeError):
                self._held_for_fork.pop().release()

    def _after_fork_in_child(self) -> None:
        """In the child: fresh locks and no thread (the parent's did not follow), the forking thread's
        native id its own; then each module's hook, which may ask for the thread again
        (`_restart_in_child` starts it)."""
        global _logged_lock
        _logged_lock = threading.Lock()
        self._held_for_fork.clear()
        self._lock = threading.Lock()
        self._starting = threading.RLock()
        self._event = threading.Event()
        self._thread = None
        self._soon.clear()
        self.waiter = None
        self._fork_point = None
        with contextlib.suppress(Exception):
            caller = sys._getframe(1)  # the code that called os.fork() (this hook is called from C)
            self._fork_point = (caller, caller.f_lasti)
        with contextlib.suppress(Exception):
            refresh_native_id()
        self._in_child_hooks, self._start_after_hooks = True, False
        try:
            for hook in self._fork_hooks:
                if hook.in_child is not None:
                    try:
                        hook.in_child()
                    except Exception as exc:
                        log_once("fork-child", "could not reset part of the agent in a forked child", exc=exc)
        finally:
            self._in_child_hooks = False

    def forker_moved_on(self) -> bool:
        """In a forked child, whether the code that forked has run on since (a child about to exec, as a
        subprocess's with a preexec_fn, never does: it holds the interpreter until its exec)."""
        point = self._fork_point
        if point is None:
            return True
        frame, lasti = point
        moved = frame.f_lasti != lasti  # the forking frame went past its call of os.fork()
        if moved:
            self._fork_point = None
        return moved

    def _restart_in_child(self) -> None:
        """In the child, after the at-fork hooks: the thread again, if a hook asked for it."""
        if self._start_after_hooks:
            self._start_after_hooks = False
            try:
                self.ensure_running()
            except Exception as exc:
                log_once("fork-agent", "could not restart the agent in a forked child", exc=exc)


def _settle_imports() -> None:
    """Wait until no other thread is importing one of `LAZY_MODULES` (a no-op when none is)."""
    bootstrap = sys.modules.get("importlib._bootstrap")
    module_locks = getattr(bootstrap, "_module_locks", None)
    for name in LAZY_MODULES:
        spec = getattr(sys.modules.get(name), "__spec__", None)
        busy = bool(getattr(spec, "_initializing", False))
        if not busy and isinstance(module_locks, dict):
            ref = module_locks.get(name)
            busy = ref is not None and (not callable(ref) or ref() is not None)
        if busy:
            with contextlib.suppress(Exception):
                importlib.import_module(name)  # returns once the other thread's import is done


pump = Pump()
"""The process's one agent thread."""

atexit.register(pump.run_exit_hooks)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=pump._before_fork,
        after_in_parent=pump._after_fork_in_parent,
        after_in_child=pump._after_fork_in_child,
    )
