"""The pyinjector path of `perftop inject` (CPython 3.10-3.13): a small library, dlopen'ed into the target.

pyinjector attaches with ptrace, calls dlopen on one thread of the target and puts back that thread's
general registers; it never reads or writes the extended (FPU/SSE/AVX/AMX) register state, which is what
killed targets under gdb on CPUs with AMX. dlopen does use the vector registers, which the C calling
convention lets any function call clobber: so only a thread stopped inside a blocking system call (the
libc wrapper of sleep, select, recv, a futex wait...) is ever borrowed, never one running user code. That
is checked while the thread is stopped: /proc says which system call it is in, the instruction before
its program counter is a system-call instruction, and a read is not on a regular file (as the dynamic
loader's own reads are). The kernel restarts the interrupted call when the thread is let go.

The library (inject_loader.c) is built once per user with the system's C compiler and cached; each
injection writes the Python code into a copy of it (readable by the target's user, writable by no one
else) that is removed once loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "inject_loader.c"
_SLOT = b"PERFTOP-INJECT-CODE-SLOT"
_SLOT_SIZE = 32768


def _table(text: str) -> dict[int, str]:
    """{number: kind} from "kind: number number; kind: number"."""
    table = {}
    for part in text.split(";"):
        kind, _, numbers = part.partition(":")
        table.update(dict.fromkeys((int(n) for n in numbers.split()), kind.strip()))
    return table


# System calls an idle thread waits in, by machine, and the kind of wait (the preflight's probe mode).
_WAITS = {
    "x86_64": _table(
        "stdin: 0 19 34 61 128 130 247; select: 7 23 270 271; epoll: 232 281 441; sleep: 35 230; "
        "recv: 43 45 47 288 299; event: 202"
    ),
    "aarch64": _table(
        "stdin: 63 65 95 133 137 260; select: 72 73; epoll: 22 441; sleep: 101 115; "
        "recv: 202 207 212 242 243; event: 98"
    ),
}
_READS = {"x86_64": {0, 19}, "aarch64": {63, 65}}
"""read and readv: the dynamic loader reads files with them, so one on a regular file is not an idle wait."""
_SYSCALL_INSN = {"x86_64": b"\x0f\x05", "aarch64": b"\x01\x00\x00\xd4"}


class LoaderError(Exception):
    """The pyinjector path cannot be used here; the message is one line (what, then the fix)."""


def supported() -> str | None:
    """None if this machine can use the pyinjector path, else why not (one line)."""
    if platform.machine() not in _WAITS:
        return f"no pyinjector path on {platform.machine()} (x86_64 and aarch64 only)"
    try:
        import pyinjector  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return "pyinjector is not installed (pip install pyinjector)"
    return None


_LIBC = re.compile(r"\s(/\S*/libc(?:\.so\.\d+|-[\d.]+\.so))$")


def untrusted_libc(pid: int) -> str | None:
    """Why pyinjector must not read `pid`'s C library as root (it parses that ELF file to find dlopen),
    or None: as root, the file must be root's and writable by no one else."""
    if os.geteuid() != 0:
        return None
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
            paths = {m.group(1) for m in map(_LIBC.search, f.read().splitlines()) if m}
    except OSError as exc:
        return f"cannot read /proc/{pid}/maps ({exc.strerror})"
    if not paths:
        return "no C library (libc.so) is mapped in it"
    for path in paths:
        try:
            info = os.stat(path)
        except OSError as exc:
            return f"its C library {path} cannot be checked ({exc.strerror})"
        if info.st_uid != 0 or info.st_mode & 0o022:
            return f"its C library {path} is not a root-owned file that only root may change"
    return None


def _cache_dir() -> Path | None:
    """This user's cache directory for the built library, or None if it cannot be made (no home)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "perftop"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK) else None


def _ours(path: Path) -> bool:
    """Exists, is a regular file of this user, and no one else may write it."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022


def library() -> bytes:
    """The built loader library, built (about 0.3 s) once per user and source into the user's cache, or
    for each injection where there is no cache."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + platform.machine().encode()).hexdigest()[:16]
    cache = _cache_dir()
    built = cache / f"inject-loader-{digest}.so" if cache is not None else None
    if built is not None and _ours(built):
        return built.read_bytes()
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise LoaderError("no C compiler to build the injection library: install one (apt-get install gcc)")
    with tempfile.TemporaryDirectory(prefix="perftop-build-", dir=cache) as work:
        partial = os.path.join(work, "inject-loader.so")
        try:
            result = subprocess.run(
                [compiler, "-shared", "-fPIC", "-O2", "-o", partial, str(SOURCE), "-lpthread", "-ldl"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=60,
                check=False,
            )
            if result.returncode != 0:
                last = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
                raise LoaderError(f"{compiler} could not build the injection library ({last})")
            data = Path(partial).read_bytes()
            if built is not None:
                os.chmod(partial, 0o644)
                os.replace(partial, built)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LoaderError(f"could not build the injection library ({exc})") from None
    return data


def copy_with_code(code: str) -> Path:
    """A copy of the library carrying `code`, in a new directory of ours that any user can read.

    The caller removes it (`remove_copy`) once it is loaded: the target keeps its mapping."""
    data = library()
    encoded = code.encode("ascii") + b"\0"
    at = data.find(_SLOT)
    if at < 0 or data.find(_SLOT, at + 1) >= 0:
        raise LoaderError("the injection library has no single code slot: remove ~/.cache/perftop")
    if len(encoded) > _SLOT_SIZE:
        raise LoaderError(f"the injected code is too long ({len(encoded)} bytes, at most {_SLOT_SIZE})")
    folder = tempfile.mkdtemp(prefix="perftop-inject-")
    os.chmod(folder, 0o755)
    path = Path(folder) / "perftop-agent-loader.so"
    with open(path, "wb") as f:
        f.write(data[:at] + encoded + data[at + len(encoded) :])
    os.chmod(path, 0o644)
    return path


def remove_copy(path: Path) -> None:
    """Remove a copy made by `copy_with_code`, and its directory."""
    with contextlib.suppress(OSError):
        path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def _syscall_fields(pid: int, tid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall", encoding="ascii") as f:
            return f.read().split()
    except OSError:
        return []


def wait_kind(pid: int, tid: int, verify: bool = False) -> str | None:
    """The kind of wait thread `tid` is in (`sleep`, `select`, `epoll`, `recv`, `event`, `stdin`), or None
    when it is not in one of those system calls. `verify` (only while it is stopped under ptrace): also check
    the instruction before its program counter, and that a read is not on a regular file."""
    machine = platform.machine()
    fields = _syscall_fields(pid, tid)
    if len(fields) < 3 or fields[0] in ("running", "-1"):
        return None
    try:
        number = int(fields[0])
    except ValueError:
        return None
    kind = _WAITS.get(machine, {}).get(number)
    if kind is None or not verify:
        return kind
    insn = _SYSCALL_INSN[machine]
    try:
        pc = int(fields[-1], 16)
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(pc - len(insn))
            if mem.read(len(insn)) != insn:
                return None
        if number in _READS[machine]:
            fd = int(fields[1], 16)
            if stat.S_ISREG(os.stat(f"/proc/{pid}/fd/{fd}").st_mode):
                return None
    except (OSError, ValueError, OverflowError):
        return None
    return kind


def waiting_threads(pid: int) -> list[tuple[int, str]]:
    """The threads of `pid` waiting in a system call, with the kind of wait; the main thread first."""
    try:
        tids = sorted((int(t) for t in os.listdir(f"/proc/{pid}/task")), key=lambda t: (t != pid, t))
    except (OSError, ValueError):
        return []
    found = []
    for tid in tids:
        kind = wait_kind(pid, tid)
        if kind is not None:
            found.append((tid, kind))
    return found


class NoWaitingThread(LoaderError):
    """No thread of the target was seen stopped in a blocking system call before the deadline."""


class PtraceDenied(LoaderError):
    """pyinjector was not allowed to attach."""


def load(pid: int, path: Path, deadline: float) -> str:
    """dlopen `path` in `pid` on a thread stopped in a blocking system call; returns the kind of wait.

    Threads are attached one at a time and let go untouched unless the check passes; retried every
    50 ms until `deadline`."""
    from pyinjector.api import (  # type: ignore[import-untyped]
        InjectorError,
        LinuxInjectorPermissionError,
        attach,
    )

    while True:
        for tid, _ in waiting_threads(pid):
            try:
                with attach(tid) as injector:
                    kind = wait_kind(pid, tid, verify=True)
                    if kind is None:
                        continue
                    injector.inject(str(path).encode())
                    return kind
            except LinuxInjectorPermissionError as exc:
                raise PtraceDenied(_one_line(exc)) from None
            except InjectorError as exc:
                if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                    continue
                raise LoaderError(f"pyinjector failed: {_one_line(exc)}") from None
        if time.monotonic() >= deadline:
            raise NoWaitingThread(
                f"no thread of PID {pid} was waiting in a system call (sleep, select, recv, a lock...): "
                "all were running code"
            )
        time.sleep(0.05)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split("\n", 1)[0].split())
