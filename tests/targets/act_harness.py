"""Harness for the action test targets: runs perftop actions inside this process when told to.

Protocol: one JSON object per line on stdin, one per line on stdout.
  {"id": N, "action": NAME, "params": {...}}  run the action in a new daemon thread "perftop-action-N"
                                              (the agent server's worker will do the same), reply when done:
                                              {"id": N, "ok": true, "result": ...} or
                                              {"id": N, "ok": false, "error": MSG, "error_type": TYPE}
  {"id": N, "cancel": M}                      set action M's cancel event; reply {"id": N, "ok": true}
  {"id": N, "cmd": NAME, "args": {...}}       run a target command on the main thread and reply its result
  {"id": N, "cmd": "exit"}                    return from serve() (the target's script then ends)
On start the harness writes {"ready": true, "pid": PID}.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from perftop.agent.actions import ActionError, run_action

Command = Callable[[dict[str, Any]], Any]


class Probe:
    """Asks every looping app thread to report its own `sys.getprofile()` (only a thread can read its own)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._reports: dict[str, str | None] = {}
        self._members: set[str] = set()
        self._local = threading.local()

    def register(self) -> None:
        """Call once from each looping thread that must answer probes."""
        with self._lock:
            self._members.add(threading.current_thread().name)
        self._local.seen = self._generation

    def unregister(self) -> None:
        with self._lock:
            self._members.discard(threading.current_thread().name)

    def check(self) -> None:
        """Call often from each registered thread: answers a pending probe."""
        generation = self._generation
        if getattr(self._local, "seen", generation) != generation:
            self._local.seen = generation
            current = sys.getprofile()
            with self._lock:
                self._reports[threading.current_thread().name] = None if current is None else repr(current)

    def ask(self, timeout: float = 10.0) -> dict[str, str | None]:
        """Bump the probe generation and wait until every registered thread has answered."""
        with self._lock:
            self._reports = {}
            self._generation += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._members.issubset(self._reports):
                    break
            time.sleep(0.01)
        current = sys.getprofile()
        with self._lock:
            reports = dict(self._reports)
            missing = sorted(self._members - set(reports))
        reports[threading.current_thread().name] = None if current is None else repr(current)
        for name in missing:
            reports[name] = "NO ANSWER"
        return reports


class Harness:
    """Reads commands on stdin; actions run on their own threads, target commands on the main thread."""

    def __init__(self, commands: dict[str, Command] | None = None) -> None:
        self.commands = dict(commands or {})
        self._out_lock = threading.Lock()
        self._cancels: dict[int, threading.Event] = {}

    def write(self, message: dict[str, Any]) -> None:
        line = json.dumps(message)
        with self._out_lock:
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):
                pass

    def _run(self, ident: int, name: str, params: Any, cancel: threading.Event) -> None:
        try:
            result = run_action(name, params, cancel)
        except ActionError as exc:
            self.write({"id": ident, "ok": False, "error": str(exc), "error_type": "ActionError"})
        except BaseException as exc:
            self.write(
                {
                    "id": ident,
                    "ok": False,
                    "error": f"{type(exc).__name__}: {exc}",
                    "error_type": type(exc).__name__,
                    "traceback": traceback.format_exc(),
                }
            )
        else:
            self.write({"id": ident, "ok": True, "result": result})

    def serve(self) -> None:
        self.write({"ready": True, "pid": os.getpid()})
        for line in iter(sys.stdin.readline, ""):
            message = json.loads(line)
            ident = message["id"]
            if "action" in message:
                cancel = threading.Event()
                self._cancels[ident] = cancel
                threading.Thread(
                    target=self._run,
                    args=(ident, message["action"], message.get("params", {}), cancel),
                    name=f"perftop-action-{ident}",
                    daemon=True,
                ).start()
            elif "cancel" in message:
                event = self._cancels.get(message["cancel"])
                if event is not None:
                    event.set()
                self.write({"id": ident, "ok": True, "result": event is not None})
            elif message.get("cmd") == "exit":
                return
            else:
                try:
                    result = self.commands[message["cmd"]](message.get("args", {}))
                except Exception as exc:
                    self.write(
                        {"id": ident, "ok": False, "error": repr(exc), "error_type": type(exc).__name__}
                    )
                else:
                    self.write({"id": ident, "ok": True, "result": result})
