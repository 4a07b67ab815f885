"""Where agents put their sockets, and the checks that keep that place private. Standard library only.

Shared by the agent (which creates the directory and its socket) and the viewer (which only looks), so
both sides agree on the location: `$PERFTOP_SOCKET_DIR`, else `$XDG_RUNTIME_DIR/perftop`, else
`/tmp/perftop-<uid>`; one socket per process, named `<pid>.sock`.

Another user may create `/tmp/perftop-<uid>` first (squatting it). An agent with the default directory
then serves from a private one of its own (`<default>.N`, else an unguessable `mkdtemp`) and says where;
viewers find it through the process's own listening sockets, and check whom they reached with SO_PEERCRED.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile

SOCKET_SUFFIX = ".sock"
PID_MAX = 4_194_304
"""The kernel's largest possible PID (PID_MAX_LIMIT on 64-bit Linux)."""
FALLBACK_DIRS = 8
"""`<default>.1` to `<default>.N` are tried when the default directory is taken, then a `mkdtemp`."""
_SOCKET_NAME = re.compile(r"^([1-9][0-9]{0,9})\.sock$")


class SocketDirError(OSError):
    """The socket directory cannot be used safely (owned by someone else, not a directory, a symlink)."""


def socket_dir(explicit: str | None = None) -> str:
    """The directory of agent sockets: `explicit`, else the environment's choice, else /tmp/perftop-<uid>."""
    if explicit:
        return explicit
    env = os.environ.get("PERFTOP_SOCKET_DIR")
    if env:
        return env
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "perftop")
    return f"/tmp/perftop-{os.getuid()}"


def agent_socket_dir(explicit: str | None = None) -> tuple[str, str | None]:
    """The private directory an agent serves in, created if needed, and why it is not the usual one.

    An explicit directory (argument or `$PERFTOP_SOCKET_DIR`) that cannot be trusted raises
    SocketDirError: the user chose it. The default one, when another user owns it (or it is a symlink or
    not a directory), is replaced by one of ours. Raises OSError when no directory can be made.
    """
    directory = socket_dir(explicit)
    try:
        ensure_private_dir(directory)
        return directory, None
    except SocketDirError as exc:
        if explicit or os.environ.get("PERFTOP_SOCKET_DIR"):
            raise
        reason = f"the socket directory {directory} cannot be trusted ({exc.strerror})"
    for n in range(1, FALLBACK_DIRS + 1):
        candidate = f"{directory}.{n}"
        try:
            ensure_private_dir(candidate)
        except SocketDirError:
            continue
        return candidate, reason
    parent, base = os.path.split(directory)
    return tempfile.mkdtemp(prefix=f"{base}-", dir=parent or None), reason


def socket_path(pid: int, directory: str) -> str:
    """The socket file of process `pid` in `directory`."""
    return os.path.join(directory, f"{pid}{SOCKET_SUFFIX}")


def pid_of_socket_name(name: str) -> int | None:
    """The pid in a socket file name such as `1234.sock`, or None if the name is not one of ours."""
    match = _SOCKET_NAME.match(name)
    return int(match.group(1)) if match else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs (one of another user counts; a zombie does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # "pid (comm) S ...": the state follows the last ')' (comm may hold anything).
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def ensure_private_dir(directory: str) -> None:
    """Create `directory` with mode 0700 if missing; refuse one that another user owns or that is not a
    plain directory; tighten the mode of our own directory to 0700.

    Raises SocketDirError when the directory cannot be trusted, OSError when it cannot be created.
    """
    uid = os.getuid()
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(directory, 0o700, exist_ok=True)
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode):
        raise SocketDirError(errno.ELOOP, "socket directory is a symlink; refusing it", directory)
    if not stat.S_ISDIR(st.st_mode):
        raise SocketDirError(errno.ENOTDIR, "socket directory is not a directory", directory)
    if st.st_uid != uid:
        raise SocketDirError(
            errno.EPERM,
            f"socket directory is owned by uid {st.st_uid}, not by this process's uid {uid}",
            directory,
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(directory, 0o700)


def remove_stale_sockets(directory: str) -> list[str]:
    """Remove `<pid>.sock` files of processes that no longer exist; returns the paths removed.

    Only sockets owned by this uid with one of our names are touched.
    """
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    uid = os.getuid()
    for name in names:
        pid = pid_of_socket_name(name)
        if pid is None or pid == os.getpid() or pid_alive(pid):
            continue
        path = os.path.join(directory, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISSOCK(st.st_mode) and st.st_uid == uid:
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
    return removed
