"""Finding the agent socket of a process (and of its children). Viewer side; may use psutil.

An agent listens on `<socket dir>/<pid>.sock`. The socket directory is the viewer's (explicit,
`$PERFTOP_SOCKET_DIR`, `$XDG_RUNTIME_DIR/perftop` or `/tmp/perftop-<uid>`), then `/tmp/perftop-<uid>` of
the uid owning the target process (root attaching to a service user's process). Failing those, the
process's own listening Unix sockets are read from /proc: an agent started with another socket directory
(or serving from a fallback because another user squatted the default one) is still found, as long as
its socket is named `<pid>.sock`.

A socket in a directory is only taken if the directory and the socket belong to the process's uid (or
root) and the directory is not writable by others: a squatter's directory is passed over. The client
then checks the peer itself with SO_PEERCRED (`AgentClient`).
"""

from __future__ import annotations

import contextlib
import os
import stat

import psutil

from perftop.collectors.proclist import descendants_of
from perftop.wire import paths

_ACCEPTCON = 0x10000
"""__SO_ACCEPTCON in /proc/net/unix flags: the socket is listening."""


def socket_dir(explicit: str | None = None) -> str:
    """The directory where this viewer looks for agent sockets first (the agents' default choice)."""
    return paths.socket_dir(explicit)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _trusted_socket(path: str, uid: int | None) -> bool:
    """A socket owned by `uid` (or root) in a directory owned by `uid` (or root) that no one else may
    write to, neither of them a symlink. With `uid` None (unknown), only that it is a socket."""
    if uid is None:
        return _is_socket(path)
    owners = (uid, 0)
    try:
        dir_st = os.lstat(os.path.dirname(path) or ".")
        sock_st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(dir_st.st_mode)
        and dir_st.st_uid in owners
        and not dir_st.st_mode & 0o022
        and stat.S_ISSOCK(sock_st.st_mode)
        and sock_st.st_uid in owners
    )


def _owner_uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _candidate_dirs(pid: int, explicit: str | None) -> list[str]:
    dirs = [paths.socket_dir(explicit)]
    with contextlib.suppress(OSError):
        uid = os.stat(f"/proc/{pid}").st_uid
        fallback = f"/tmp/perftop-{uid}"
        if fallback not in dirs:
            dirs.append(fallback)
    return dirs


def find_agent(pid: int, socket_dir: str | None = None) -> str | None:
    """The socket path of `pid`'s agent, or None if it has none (or is not alive)."""
    if not paths.pid_alive(pid):
        return None
    uid = _owner_uid(pid)
    for directory in _candidate_dirs(pid, socket_dir):
        path = paths.socket_path(pid, directory)
        if _trusted_socket(path, uid):
            return path
    return _listening_socket_of(pid)


def _listening_socket_of(pid: int) -> str | None:
    """A listening Unix socket of `pid` whose path ends in `/<pid>.sock`, from /proc (None if unreadable)."""
    try:
        inodes: set[int] = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
        if not inodes:
            return None
        with open(f"/proc/{pid}/net/unix", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()[1:]
    except (OSError, ValueError):
        return None
    suffix = f"/{pid}{paths.SOCKET_SUFFIX}"
    for line in lines:
        # Num RefCount Protocol Flags Type St Inode Path
        fields = line.split(None, 7)
        if len(fields) < 8:
            continue
        try:
            flags, inode = int(fields[3], 16), int(fields[6])
        except ValueError:
            continue
        path = fields[7]
        if inode in inodes and flags & _ACCEPTCON and path.endswith(suffix) and _is_socket(path):
            # The process's own listening socket: whoever owns the directory, this is its agent.
            return path
    return None


def find_child_agents(pid: int, socket_dir: str | None = None) -> dict[int, str]:
    """{child pid: socket path} for every descendant of `pid` that runs an agent."""
    try:
        children = descendants_of(psutil.Process(pid))
    except (psutil.Error, OSError):
        return {}
    out: dict[int, str] = {}
    for child in children:
        path = find_agent(child.pid, socket_dir)
        if path is not None:
            out[child.pid] = path
    return out


def agents_in(directory: str) -> dict[int, str]:
    """{pid: socket path} of every live process with an agent socket (`<pid>.sock`) in `directory`, this
    process's own left out: a whole host's agents, for the exporter (an unreadable directory has none)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return {}
    found: dict[int, str] = {}
    for name in names:
        pid = paths.pid_of_socket_name(name)
        if pid is not None and pid != os.getpid() and paths.pid_alive(pid):
            found[pid] = os.path.join(directory, name)
    return found
