"""The host's process list: one row per readable process, with CPU measured between calls.

`psutil.Process` objects are kept from one call to the next so each one's `cpu_percent` is the share of CPU
it used since the previous call. They are keyed by process identity, i.e. (pid, creation time): that is
how psutil compares and hashes `Process` objects, so a PID reused by a new process gets a new object
instead of inheriting the old one's CPU baseline.
"""

from __future__ import annotations

import pwd

import psutil

from perftop.collectors.model import ProcessRow


class ProcessLister:
    """Lists processes; vanished or unreadable ones are skipped silently."""

    def __init__(self) -> None:
        self._procs: dict[psutil.Process, psutil.Process] = {}
        self._users: dict[int, str] = {}

    def sample(self) -> list[ProcessRow]:
        """A row per process that exists and can be read now, in PID order."""
        rows: list[ProcessRow] = []
        kept: dict[psutil.Process, psutil.Process] = {}
        for pid in psutil.pids():
            try:
                fresh = psutil.Process(pid)
                proc = self._procs.get(fresh, fresh)
                with proc.oneshot():
                    name = proc.name()
                    cmdline = proc.cmdline()
                    uid = proc.uids().real
                    row = ProcessRow(
                        pid=pid,
                        name=name,
                        cmdline=" ".join(cmdline) if cmdline else f"[{name}]",
                        username=self._user_name(uid),
                        cpu_percent=proc.cpu_percent(None),
                        rss_bytes=proc.memory_info().rss,
                        num_threads=proc.num_threads(),
                    )
            except psutil.Error:  # NoSuchProcess (also zombies that vanish), AccessDenied
                continue
            kept[proc] = proc
            rows.append(row)
        self._procs = kept
        return rows

    def process(self, pid: int) -> psutil.Process | None:
        """The `psutil.Process` kept for `pid` since the last `sample()`, if it was listed then."""
        for proc in self._procs:
            if proc.pid == pid:
                return proc
        return None

    def _user_name(self, uid: int) -> str:
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._users[uid] = name
        return name
