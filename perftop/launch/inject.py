"""Starting perftop's agent inside a running Python process that has none (`perftop inject PID`).

The target needs nothing installed: the injected code imports perftop from this package's directory (with
a meta-path finder for that one name, as the `perftop run` bootstrap does, so the target's sys.path is
untouched) and calls `perftop.start()`; the agent is standard library only.

How the code gets in:
- Python 3.14+ (PEP 768): `sys.remote_exec`, run by the target's own interpreter binary (/proc/PID/exe),
  since caller and target must be the same version. The target runs the script at its next safe point.
- Python 3.10-3.13, first choice: pyinjector (inject_loader.py), which borrows a thread stopped in a
  blocking system call to dlopen a small library; the library starts a thread of its own that takes the
  GIL and runs the code. Only the general registers of the borrowed thread are saved and put back; its
  extended register state (where gdb 13 failed on CPUs with AMX, killing the target) is never written.
- Otherwise (no thread waits in a system call: the target is busy; or no C compiler): gdb. A gdb Python
  script attaches, maps a page in the target with mmap and writes the code there (so gdb never calls
  malloc in a target that may be stopped inside malloc), then picks the safest way to run it:
  * a thread blocked in a system call, not holding the GIL, not inside the allocator or the dynamic
    loader (the usual idle main thread in sleep/select/read): `PyGILState_Ensure`, `PyRun_SimpleString`,
    `PyGILState_Release` on that thread. Its system call is interrupted; Python retries it (PEP 475);
  * otherwise (the main thread is running Python code): `Py_AddPendingCall(PyRun_SimpleString, code)`,
    which the main thread runs between two bytecodes, where the interpreter is consistent.

Before either touches the target, a preflight injects the same way into a throwaway process of the
target's interpreter (inject_probe.py), run as the target's user and waiting the same way: the method is
used only if that process survives, its agent answers and its wait still ends when it should. If no
method passes, the target is not touched and the error says why. Whatever runs on the target's behalf
(its interpreter binary, for the 3.14 caller and the preflight) runs as the target's uid, gid and groups,
never as root.

The injected code catches everything (PyRun_SimpleString must return 0 inside a pending call, and a
SystemExit must never reach it) and reports its outcome in a status file that this side reads.
Every failure is an `InjectError` whose text is one line: the reason, then the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import mmap
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NoReturn

from perftop.launch import inject_loader
from perftop.wire import paths

PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)
"""The perftop package directory the target loads (it must be readable by the target's user)."""
PROBE = os.path.join(PACKAGE_DIR, "launch", "inject_probe.py")
"""The throwaway process of the preflight (run by the target's interpreter)."""
MIN_PYTHON = (3, 10)
"""The oldest Python the agent runs on."""
REMOTE_EXEC_PYTHON = (3, 14)
"""From this version on, `sys.remote_exec` is used instead of gdb."""
_CAP_SYS_PTRACE = 19
_MARK = "PERFTOP-INJECT"
_PYTHON_SYMBOL = b"\x00PyRun_SimpleString\x00"
"""In the dynamic symbol table of every CPython interpreter (and not of PyPy, whose names are PyPy*)."""


class InjectError(Exception):
    """Injection failed; the message is one line: what went wrong, then how to fix it.

    `bad_input` is True when the PID is the problem (no such process, not CPython, not ours to ptrace,
    too old...: exit code 2 in the CLI), False for a failure of the injection itself (exit code 1)."""

    def __init__(self, message: str, *, bad_input: bool = False) -> None:
        super().__init__(message)
        self.bad_input = bad_input


@dataclass(frozen=True)
class Target:
    """What /proc says about the process to inject into."""

    pid: int
    name: str
    uid: int
    exe: str
    version: tuple[int, int] | None
    exe_is_python: bool
    """The executable itself is a Python interpreter (not a program embedding libpython)."""


# -- the code that runs inside the target --------------------------------------------------------------

_BOOTSTRAP = """
def _perftop_inject(pkg, socket_dir, status):
    import sys

    def report(text):
        try:
            import os

            fd = os.open(status, os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, text.encode("utf-8", "replace"))
            finally:
                os.close(fd)
        except Exception:
            pass

    try:
        import importlib
        import importlib.util
        import logging
        import os

        if sys.version_info < (3, 10):
            version = "%d.%d" % sys.version_info[:2]
            report("error Python " + version + " is too old for the agent (3.10 or later is needed)")
            return

        class Finder:
            # `perftop`, and only it, from pkg, through the import system (its module lock keeps any
            # other thread from seeing it half-imported); removed once imported.
            def find_spec(self, fullname, path=None, target=None):
                if fullname != "perftop":
                    return None
                return importlib.util.spec_from_file_location(
                    "perftop", os.path.join(pkg, "__init__.py"), submodule_search_locations=[pkg]
                )

        finder = Finder()
        sys.meta_path.insert(0, finder)
        try:
            module = importlib.import_module("perftop")
        finally:
            sys.meta_path.remove(finder)
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logger = logging.getLogger("perftop")
        logger.addHandler(handler)
        try:
            module.start(socket_dir=socket_dir)
            if "sqlalchemy" in sys.modules:
                module.instrument_sqlalchemy(None)
        finally:
            logger.removeHandler(handler)
        path = module.socket_file()
        if path:
            report("ok " + path)
        elif records:
            report("error " + records[0].getMessage().replace("perftop: ", "", 1))
        else:
            report("error the agent did not open its socket")
    except BaseException as exc:
        report("error %s: %s" % (type(exc).__name__, exc))
"""


def bootstrap_code(socket_dir: str | None, status_path: str, package_dir: str = PACKAGE_DIR) -> str:
    """The Python source run inside the target: self-contained, ASCII, never raises, leaves no global."""
    body = _BOOTSTRAP + f"_perftop_inject({package_dir!a}, {socket_dir!a}, {status_path!a})\n"
    return (
        "try:\n"
        f"    __import__('builtins').exec({body!a}, {{'__name__': 'perftop_inject'}})\n"
        "except BaseException:\n"
        "    pass\n"
    )


# -- the gdb side -----------------------------------------------------------------------------------------

_GDB_SCRIPT = r"""
import re
import gdb

PID = __PID__
CODE = bytes.fromhex("__CODE__")
MARK = "__MARK__"
REQUIRED = ("PyGILState_Ensure", "PyGILState_Release", "PyGILState_Check", "PyGILState_GetThisThreadState",
            "PyRun_SimpleString", "Py_AddPendingCall", "Py_IsInitialized")
# A thread stopped inside one of these must not run our code: it may hold the allocator's or the
# loader's lock, or be a waiter on the GIL's condition variable (a second, nested wait on it deadlocks).
UNSAFE_FRAME = re.compile(
    r"malloc|calloc|realloc|free|memalign|tcache|arena|dlopen|dl_open|_dl_|dlclose|pthread_cond|"
    r"take_gil|drop_gil|RestoreThread|AcquireThread|GILState|PendingCall|pending_call"
)
SYSCALL_INSNS = (b"\x0f\x05", b"\x01\x00\x00\xd4")  # x86-64 syscall, aarch64 svc #0


def report(kind, text=""):
    gdb.write("%s %s %s\n" % (MARK, kind, " ".join(str(text).split())))
    gdb.flush()


def value(expr):
    return int(gdb.parse_and_eval(expr))


def quietly(command):
    try:
        gdb.execute(command, to_string=True)
    except gdb.error:
        pass


def has_symbol(name):
    try:
        gdb.parse_and_eval("(long)&%s" % name)
        return True
    except gdb.error:
        return False


def in_syscall(inferior):
    pc = int(gdb.selected_frame().pc())
    for insn in SYSCALL_INSNS:
        try:
            if bytes(inferior.read_memory(pc - len(insn), len(insn))) == insn:
                return True
        except (gdb.error, gdb.MemoryError, ValueError):
            pass
    return False


def unsafe_frame():
    frame = gdb.newest_frame()
    depth = 0
    while frame is not None and depth < 64:
        name = frame.name() or ""
        if UNSAFE_FRAME.search(name):
            return name
        try:
            frame = frame.older()
        except gdb.error:
            return None
        depth += 1
    return None


def idle_thread(inferior):
    # A Python thread blocked in a system call, not holding the GIL, in no unsafe frame; main first.
    for thread in sorted(inferior.threads(), key=lambda t: t.ptid[1] != PID):
        try:
            thread.switch()
            if not in_syscall(inferior) or unsafe_frame():
                continue
            if value("(long)PyGILState_GetThisThreadState()") == 0:
                continue
            if value("(int)PyGILState_Check()") == 0:
                return thread
        except gdb.error:
            continue
    return None


def inject(inferior):
    missing = [name for name in REQUIRED if not has_symbol(name)]
    if missing:
        report("not-python", ", ".join(missing))
        return
    main = [t for t in inferior.threads() if t.ptid[1] == PID]
    if main:
        main[0].switch()
    if value("(int)Py_IsInitialized()") == 0:
        report("not-initialized")
        return
    for finalizing in ("Py_IsFinalizing", "_Py_IsFinalizing"):
        if has_symbol(finalizing):
            if value("(int)%s()" % finalizing):
                report("not-initialized")
                return
            break
    size = (len(CODE) + 1 + 4095) // 4096 * 4096
    mmap = "((void *(*)(void *, unsigned long, int, int, int, long))mmap)"
    addr = value("(long)%s(0, %d, 3, 34, -1, 0)" % (mmap, size))
    if addr in (0, -1) or addr < 0:
        report("error", "mmap failed in the target")
        return
    inferior.write_memory(addr, CODE + b"\x00")
    thread = idle_thread(inferior)
    if thread is not None:
        # From here on, gdb must be left to finish: interrupting a thread waiting for the GIL breaks the GIL.
        report("calling", "thread=%d" % thread.ptid[1])
        state = value("(int)PyGILState_Ensure()")
        rc = value("(int)PyRun_SimpleString((const char *)%d)" % addr)
        gdb.parse_and_eval("(void)PyGILState_Release(%d)" % state)
        report("ran", "thread=%d rc=%d" % (thread.ptid[1], rc))
        return
    if main:
        main[0].switch()
    rc = value("(int)Py_AddPendingCall((int (*)(void *))PyRun_SimpleString, (void *)%d)" % addr)
    if rc == 0:
        report("pending")
    else:
        report("error", "the target's pending-call queue is full")


def main():
    for command in ("set confirm off", "set pagination off", "set debuginfod enabled off",
                    "set auto-load python-scripts off", "set unwindonsignal on",
                    "set print thread-events off", "set print inferior-events off",
                    "set libthread-db-search-path $sdir",
                    "handle all nostop noprint pass",
                    "handle SIGINT nostop noprint pass",
                    "handle SIGSEGV SIGBUS SIGILL SIGFPE SIGABRT stop print nopass"):
        quietly(command)
    try:
        gdb.execute("attach %d" % PID, to_string=True)
    except gdb.error as exc:
        report("attach-failed", exc)
        return
    inferior = gdb.selected_inferior()
    if not inferior.pid:
        report("attach-failed", "gdb could not attach")
        return
    report("attached")
    try:
        inject(inferior)
    except gdb.error as exc:
        report("error", exc)
    finally:
        try:
            gdb.execute("detach", to_string=True)
        except gdb.error as exc:
            report("detach-failed", exc)


main()
"""


def gdb_script(pid: int, code: str) -> str:
    """The gdb Python script that injects `code` into `pid` (gdb's own Python runs it)."""
    return (
        _GDB_SCRIPT.replace("__PID__", str(pid))
        .replace("__CODE__", code.encode("ascii").hex())
        .replace("__MARK__", _MARK)
    )


# -- checks, from /proc --------------------------------------------------------------------------------


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _proc_name(pid: int) -> str:
    try:
        return _read(f"/proc/{pid}/comm").strip() or "?"
    except OSError:
        return "?"


def _ptrace_scope() -> int | None:
    try:
        return int(_read("/proc/sys/kernel/yama/ptrace_scope").strip())
    except (OSError, ValueError):
        return None


def _has_cap_sys_ptrace() -> bool:
    try:
        for line in _read("/proc/self/status").splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_SYS_PTRACE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _target_uids(pid: int) -> list[int]:
    """Real, effective, saved and filesystem uids of `pid`."""
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("Uid:"):
            return [int(v) for v in line.split()[1:]]
    return [os.stat(f"/proc/{pid}").st_uid]


def _tracer_pid(pid: int) -> int:
    try:
        for line in _read(f"/proc/{pid}/status").splitlines():
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _user_name(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def ptrace_denied_reason(pid: int, detail: str = "") -> str:
    """Why this process may not ptrace `pid`, and the fix, from Yama's setting and our capabilities.
    `detail` (what failed) goes in the parenthesis with the facts."""
    scope = _ptrace_scope()
    cap = _has_cap_sys_ptrace()
    root = os.geteuid() == 0
    sudo = f"sudo perftop inject {pid}"
    yama = "no Yama LSM" if scope is None else f"kernel.yama.ptrace_scope = {scope}"

    def facts(*more: str) -> str:
        return "; ".join(f for f in (detail, *more) if f)

    if scope == 3:
        return (
            f"ptrace is disabled on this host ({facts(yama + ', until reboot')}): start the agent in the app "
            "instead (perftop run -- python app.py, or perftop.start())"
        )
    if root and not cap:
        lacking = facts("this root user lacks CAP_SYS_PTRACE: a container?")
        return (
            f"ptrace of PID {pid} is not permitted ({lacking}): start the container with --cap-add=SYS_PTRACE"
        )
    if scope == 2 and not cap:
        return f"only root may ptrace on this host ({facts(yama)}): run {sudo}"
    if scope == 1 and not cap:
        return (
            f"ptrace is limited to child processes ({facts(yama)}): run {sudo}, or allow it with: "
            "sudo sysctl kernel.yama.ptrace_scope=0"
        )
    why = facts(yama, "so the process is non-dumpable or a security policy forbids ptrace")
    return (
        f"ptrace of PID {pid} is not permitted ({why}): run {sudo}; in a container, add --cap-add=SYS_PTRACE"
    )


def _not_python(pid: int, name: str, exe: str) -> InjectError:
    return InjectError(
        f"PID {pid} ({name}, {exe}) is not a CPython process: give the PID of a Python program "
        "(pgrep -a python lists them)",
        bad_input=True,
    )


_LIBPYTHON = re.compile(r"/libpython(\d+)\.(\d+)[a-z]*\.so")
_ABI_TAG = re.compile(r"\.cpython-(\d)(\d+)[a-z]*-")
_PYTHON_EXE = re.compile(r"^python(\d+)\.(\d+)[a-z]*$")


def _exe_has_python(exe_path: str) -> bool:
    try:
        with open(exe_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(_PYTHON_SYMBOL) >= 0
    except (OSError, ValueError):
        return False


def inspect_target(pid: int) -> Target:
    """Check that `pid` is a live CPython process this user may ptrace; what it runs. InjectError if not."""
    if not paths.pid_alive(pid):
        raise InjectError(
            f"no process with PID {pid} (it exited, or never existed): check the PID with ps", bad_input=True
        )
    name = _proc_name(pid)
    try:
        uids = _target_uids(pid)
    except (OSError, ValueError) as exc:
        raise InjectError(f"cannot read /proc/{pid}/status ({exc}): check the PID with ps") from None
    if not _has_cap_sys_ptrace() and any(uid != os.getuid() for uid in uids):
        owner = _user_name(uids[0])
        raise InjectError(
            f"PID {pid} ({name}) runs as {owner}, not as this user ({_user_name(os.getuid())}): run perftop "
            f"inject as that user or as root (sudo perftop inject {pid})",
            bad_input=True,
        )
    tracer = _tracer_pid(pid)
    if tracer:
        raise InjectError(
            f"PID {pid} ({name}) is already being traced by PID {tracer} ({_proc_name(tracer)}; a debugger "
            "or strace): detach that first, then try again",
            bad_input=True,
        )
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        maps = _read(f"/proc/{pid}/maps")
    except PermissionError:
        raise InjectError(
            ptrace_denied_reason(pid, f"/proc/{pid}/exe is not readable"), bad_input=True
        ) from None
    except FileNotFoundError:
        raise InjectError(
            f"no process with PID {pid} (it exited): check the PID with ps", bad_input=True
        ) from None
    except OSError as exc:
        raise InjectError(f"cannot read /proc/{pid} ({exc.strerror}): check the PID with ps") from None
    version: tuple[int, int] | None = None
    exe_name = os.path.basename(exe.removesuffix(" (deleted)"))
    exe_match = _PYTHON_EXE.match(exe_name)
    lib = _LIBPYTHON.search(maps)
    exe_is_python = _exe_has_python(f"/proc/{pid}/exe")
    if lib is None and not exe_is_python:
        raise _not_python(pid, name, exe)
    if lib is not None:
        version = (int(lib.group(1)), int(lib.group(2)))
    elif exe_match is not None:
        version = (int(exe_match.group(1)), int(exe_match.group(2)))
    else:
        tag = _ABI_TAG.search(maps)
        if tag is not None:
            version = (int(tag.group(1)), int(tag.group(2)))
    looks_like_python = exe_match is not None or exe_name in ("python", "python3")
    return Target(pid, name, uids[0], exe, version, exe_is_python=exe_is_python or looks_like_python)


def _remote_debug_disabled(pid: int) -> bool:
    """PYTHON_DISABLE_REMOTE_DEBUG in the target's environment, or -X disable_remote_debug (3.14+)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    if any(entry.startswith(b"PYTHON_DISABLE_REMOTE_DEBUG=") for entry in environ):
        return True
    return any(arg in (b"disable_remote_debug", b"-Xdisable_remote_debug") for arg in argv)


# -- running things on the target's behalf -------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """Who a process runs as: effective uid and gid, and supplementary groups."""

    uid: int
    gid: int
    groups: tuple[int, ...]


def credentials(pid: int) -> Credentials:
    """The effective uid and gid and the supplementary groups of `pid`, from /proc/PID/status."""
    fields: dict[str, list[str]] = {}
    for line in _read(f"/proc/{pid}/status").splitlines():
        key, _, rest = line.partition(":")
        fields[key] = rest.split()
    return Credentials(
        int(fields["Uid"][1]), int(fields["Gid"][1]), tuple(int(g) for g in fields.get("Groups", []))
    )


def as_target(pid: int) -> Credentials | None:
    """Who to run a child as on `pid`'s behalf: None (as we are) when we are its user, else its uid, gid
    and groups, which only root can switch to (in the child, before it execs); refused otherwise, so
    nothing runs as root, or as us, for another user."""
    try:
        who = credentials(pid)
    except (OSError, KeyError, ValueError, IndexError) as exc:
        raise InjectError(f"cannot read the credentials of PID {pid} ({exc}): check it with ps") from None
    if os.geteuid() == who.uid:
        return None
    if os.geteuid() != 0:
        raise InjectError(
            f"PID {pid} runs as {_user_name(who.uid)}: perftop would have to run its interpreter as "
            f"{_user_name(os.geteuid())}; run perftop inject as that user or as root",
            bad_input=True,
        )
    return who


def run_target_interpreter(pid: int, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run `pid`'s own interpreter (/proc/PID/exe) with `args`, as `pid`'s uid, gid and groups
    (`as_target`): the binary, its standard library and anything it loads are the target user's."""
    who = as_target(pid)
    return subprocess.run(
        [f"/proc/{pid}/exe", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        user=None if who is None else who.uid,
        group=None if who is None else who.gid,
        extra_groups=None if who is None else list(who.groups),
    )


# -- injection -----------------------------------------------------------------------------------------


class _Status:
    """A file the injected code writes its outcome to (owned by the target's user, so it can)."""

    def __init__(self, owner_uid: int) -> None:
        fd, self.path = tempfile.mkstemp(prefix="perftop-inject-", suffix=".status")
        os.close(fd)
        if os.geteuid() == 0 and owner_uid != 0:
            with contextlib.suppress(OSError):
                os.chown(self.path, owner_uid, -1)

    def read(self) -> str:
        try:
            return _read(self.path).strip()
        except OSError:
            return ""

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _gdb_failure(target: Target, kind: str, text: str, stderr: str) -> InjectError:
    pid = target.pid
    blob = f"{text} {stderr}"
    if kind == "attach-failed" or "ptrace:" in blob:
        if "not permitted" in blob or "EPERM" in blob:
            return InjectError(
                ptrace_denied_reason(pid, "gdb: ptrace: Operation not permitted"), bad_input=True
            )
        if "No such process" in blob:
            return InjectError(
                f"no process with PID {pid} (it exited): check the PID with ps", bad_input=True
            )
        return InjectError(f"gdb could not attach to PID {pid}: {text or stderr}: check the PID with ps")
    if kind == "not-python":
        return InjectError(
            f"PID {pid} ({target.name}) has no CPython C API symbols ({text}) for gdb to call: it is not "
            "a CPython process, or its interpreter is stripped; start the agent in the app (perftop run)",
            bad_input=True,
        )
    if kind == "not-initialized":
        return InjectError(
            f"the Python interpreter of PID {pid} is starting up or shutting down: try again in a moment"
        )
    if "Python scripting is not supported" in blob:
        return InjectError(
            "this gdb has no Python support: install a gdb built with Python (apt-get install gdb)"
        )
    return InjectError(
        f"gdb failed to inject into PID {pid}: {text or stderr or 'no output'}: see gdb -p {pid}"
    )


def _run_gdb(target: Target, code: str, deadline: float) -> None:
    """Run the injection script under gdb; InjectError if gdb says it did not get the code in.

    gdb runs in its own session (a Ctrl-C of ours must not reach it) and, once it is calling into the
    target, is never interrupted: a thread abandoned while it waits for the GIL leaves the GIL's
    condition variable broken and the target deadlocked. If it is still busy at the deadline, it is left
    to finish by itself and the error says so.
    """
    gdb = shutil.which("gdb")
    if gdb is None:
        raise InjectError(
            f"gdb is not installed (needed to inject into Python {_version_text(target)}): install gdb: "
            "apt-get install gdb (dnf install gdb; apk add gdb)"
        )
    fd, script = tempfile.mkstemp(prefix="perftop-inject-", suffix=".py")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(gdb_script(target.pid, code))
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEBUGINFOD")}
        with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
            proc = subprocess.Popen(
                [gdb, "-nx", "-nh", "-q", "-batch", "-x", script],
                stdin=subprocess.DEVNULL,
                stdout=out_file,
                stderr=err_file,
                env=env,
                start_new_session=True,
            )
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _give_up_on_gdb(proc, target, _file_text(out_file))
            out, err = _file_text(out_file), _file_text(err_file)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(script)
    outcomes = _outcomes(out)
    if "ran" in outcomes or "pending" in outcomes:
        return
    for kind in ("attach-failed", "not-python", "not-initialized", "error", "detach-failed"):
        if kind in outcomes:
            raise _gdb_failure(target, kind, outcomes[kind], err)
    last = " ".join(err.strip().splitlines()[-1:]) if err.strip() else f"exit code {proc.returncode}"
    raise _gdb_failure(target, "", "", last)


def _file_text(f: IO[bytes]) -> str:
    f.flush()
    f.seek(0)
    return f.read().decode("utf-8", "replace")


def _outcomes(out: str) -> dict[str, str]:
    """The `PERFTOP-INJECT kind text` lines the gdb script printed, by kind."""
    found: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith(_MARK + " "):
            kind, _, text = line[len(_MARK) + 1 :].partition(" ")
            found[kind] = text.strip()
    return found


def _give_up_on_gdb(proc: subprocess.Popen[bytes], target: Target, out: str) -> NoReturn:
    """At the deadline: stop gdb if it never attached (harmless); otherwise leave it to finish."""
    outcomes = _outcomes(out)
    if "attached" not in outcomes:
        proc.kill()
        proc.wait()
        raise InjectError(
            f"gdb could not attach to PID {target.pid} in time (is the process stopped, or in "
            "uninterruptible sleep?): check its state with ps, then try again"
        )
    if "calling" in outcomes:
        raise InjectError(
            f"PID {target.pid} did not let the injected code take the GIL in time (a thread holds it in a "
            "long C call); gdb stays attached and finishes the injection when the GIL is released: try "
            "perftop again in a moment"
        )
    raise InjectError(
        f"gdb is still working on PID {target.pid} (it is left to finish and detach by itself): try "
        "perftop again in a moment"
    )


def _version_text(target: Target) -> str:
    return f"{target.version[0]}.{target.version[1]}" if target.version else "(version unknown)"


def _run_remote_exec(target: Target, code: str, deadline: float) -> str:
    """Hand the code to the target with `sys.remote_exec` (3.14+); returns the script path to remove."""
    pid = target.pid
    if _remote_debug_disabled(pid):
        raise InjectError(
            f"remote debugging is disabled in PID {pid} (PYTHON_DISABLE_REMOTE_DEBUG or -X "
            "disable_remote_debug): restart it without that setting, or start the agent in the app "
            "(perftop run)",
            bad_input=True,
        )
    fd, script = tempfile.mkstemp(prefix="perftop-inject-", suffix=".py")
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(code)
    os.chmod(script, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    caller = [
        "-I",
        "-S",
        "-c",
        "import sys; sys.remote_exec(int(sys.argv[1]), sys.argv[2])",
        str(pid),
        script,
    ]
    try:
        result = run_target_interpreter(pid, caller, max(1.0, deadline - time.monotonic()))
    except InjectError:
        with contextlib.suppress(OSError):
            os.unlink(script)
        raise
    except (OSError, subprocess.TimeoutExpired) as exc:
        with contextlib.suppress(OSError):
            os.unlink(script)
        raise InjectError(f"could not run sys.remote_exec for PID {pid} ({exc}): try again") from None
    if result.returncode != 0:
        with contextlib.suppress(OSError):
            os.unlink(script)
        lines = result.stderr.strip().splitlines()
        last = lines[-1] if lines else f"exit code {result.returncode}"
        if "PermissionError" in last or "Operation not permitted" in last:
            raise InjectError(ptrace_denied_reason(pid, "sys.remote_exec: " + last), bad_input=True)
        if "disable" in last.lower() and "remote" in last.lower():
            raise InjectError(
                f"remote debugging is disabled in PID {pid} ({last}): restart it without "
                "PYTHON_DISABLE_REMOTE_DEBUG, or start the agent in the app (perftop run)",
                bad_input=True,
            )
        raise InjectError(
            f"sys.remote_exec into PID {pid} failed: {last}: start the agent in the app (perftop run)"
        )
    return script


_BUSY_SAMPLES = 15
"""A target is busy if none of its threads is seen waiting in a system call in this many looks, 20 ms
apart (an idle loop that wakes up briefly is caught waiting)."""


class _PreflightFailed(Exception):
    """A method harmed the throwaway process, or did not get its agent to answer (one-line reason)."""


def _inject_by_ptrace(target: Target, code: str, deadline: float, timeout: float) -> None:
    """Python 3.10-3.13: pyinjector on a thread waiting in a system call, else gdb; each used only after
    it passed a preflight on a throwaway process of the target's interpreter, run as the target's user,
    waiting the same way. If neither passes, the target is not touched and the error gives both reasons."""
    pid = target.pid
    if _other_mount_namespace(pid):
        raise InjectError(
            f"PID {pid} ({target.name}) runs in another mount namespace (a container, or a systemd service "
            "with PrivateTmp), where its interpreter, libraries and /tmp are not the files perftop sees, so "
            "no preflight can stand for it: run perftop inject inside that namespace (nsenter -m -t "
            f"{pid}), or start the agent in the app",
            bad_input=True,
        )
    waiting = inject_loader.waiting_threads(pid)
    for _ in range(_BUSY_SAMPLES):
        if waiting:
            break
        time.sleep(0.02)
        waiting = inject_loader.waiting_threads(pid)
    kind = waiting[0][1] if waiting else "busy"
    refusals: list[str] = []
    if kind == "busy":
        refusals.append("pyinjector: no thread was waiting in a system call (all were running code)")
    else:
        unsupported = inject_loader.supported() or inject_loader.untrusted_libc(pid)
        try:
            if unsupported is not None:
                raise _PreflightFailed(unsupported)
            inject_loader.library()
            _preflight(target, "pyinjector", kind, deadline, timeout)
        except inject_loader.LoaderError as exc:
            refusals.append(f"pyinjector: {exc}")
        except _PreflightFailed as exc:
            refusals.append(f"pyinjector: {exc}")
        else:
            _load_with_pyinjector(target, code, deadline)
            return
    if shutil.which("gdb") is None:
        refusals.append("gdb: gdb is not installed (apt-get install gdb)")
    else:
        try:
            _preflight(target, "gdb", kind, deadline, timeout)
        except _PreflightFailed as exc:
            refusals.append(f"gdb: {exc}")
        else:
            _run_gdb(target, code, deadline)
            return
    raise InjectError(
        f"no safe way to inject into PID {pid} ({target.name}, waiting: {kind}) was found, so it was not "
        f"touched ({'; '.join(refusals)}): start the agent in the app (perftop run, or perftop.start())"
    )


def _state(pid: int) -> str:
    """The one-letter state of `pid` (R, S, D, T...), from /proc/PID/stat; "" if unreadable."""
    try:
        return _read(f"/proc/{pid}/stat").rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return ""


def _other_mount_namespace(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    except OSError:
        return False


def _load_with_pyinjector(target: Target, code: str, deadline: float) -> None:
    """dlopen the loader library carrying `code` in the target, on a thread waiting in a system call."""
    pid = target.pid
    try:
        copy = inject_loader.copy_with_code(code)
    except inject_loader.LoaderError as exc:
        raise InjectError(f"cannot prepare the injection library: {exc}") from None
    try:
        inject_loader.load(pid, copy, deadline)
    except inject_loader.PtraceDenied as exc:
        raise InjectError(ptrace_denied_reason(pid, f"pyinjector: {exc}"), bad_input=True) from None
    except inject_loader.NoWaitingThread as exc:
        raise InjectError(f"{exc} in time, so it was not touched: try again in a moment") from None
    except inject_loader.LoaderError as exc:
        raise InjectError(f"could not load the agent into PID {pid}: {exc}: see dmesg") from None
    finally:
        inject_loader.remove_copy(copy)


def _read_line(stream: IO[bytes], deadline: float) -> str:
    """One line from a child's pipe, or what came before the deadline or its end."""
    data = b""
    fd = stream.fileno()
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").strip()


def _ending(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _harmed(proc: subprocess.Popen[bytes], err: bytes | None = None) -> str:
    """How the throwaway process ended, with the last line it wrote on stderr (its traceback's)."""
    if err is None:
        err = proc.communicate()[1]
    last = " ".join(err.decode("utf-8", "replace").strip().splitlines()[-1:])
    return f"the throwaway process was harmed ({_ending(proc.returncode)}{': ' + last if last else ''})"


def _preflight(target: Target, method: str, kind: str, deadline: float, timeout: float) -> None:
    """Inject with `method` into a throwaway process of the target's interpreter (/proc/PID/exe, as the
    target's uid, gid and groups) waiting in `kind` (inject_probe.py); _PreflightFailed unless its agent
    answers, it is still alive, and its wait then ends normally when woken."""
    if not target.exe_is_python:
        raise _PreflightFailed(
            f"its interpreter is embedded in {target.exe}, so no throwaway process of it can be started"
        )
    who = as_target(target.pid)
    socket_dir = tempfile.mkdtemp(prefix="perftop-preflight-")
    if os.geteuid() == 0 and target.uid != 0:
        os.chown(socket_dir, target.uid, -1)
    status = _Status(target.uid)
    ours, theirs = socket.socketpair() if kind == "recv" else (None, None)
    try:
        proc = subprocess.Popen(
            [f"/proc/{target.pid}/exe", "-I", "-S", PROBE, kind],
            stdin=theirs.fileno() if theirs is not None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
            start_new_session=True,
            user=None if who is None else who.uid,
            group=None if who is None else who.gid,
            extra_groups=None if who is None else list(who.groups),
        )
    except OSError as exc:
        for end in (ours, theirs):
            if end is not None:
                end.close()
        status.remove()
        shutil.rmtree(socket_dir, ignore_errors=True)
        raise _PreflightFailed(f"the throwaway process could not start ({exc})") from None
    try:
        assert proc.stdout is not None and proc.stderr is not None
        if _read_line(proc.stdout, deadline) != "ready":
            ended = proc.poll()
            how = "in time" if ended is None else f"({_ending(ended)})"
            raise _PreflightFailed(f"the throwaway process did not start {how}")
        probe = dataclasses.replace(target, pid=proc.pid)
        try:
            if method == "pyinjector":
                _load_with_pyinjector(probe, bootstrap_code(socket_dir, status.path), deadline)
            else:
                _run_gdb(probe, bootstrap_code(socket_dir, status.path), deadline)
            _wait_for_agent(probe, socket_dir, status, deadline, timeout)
        except InjectError as exc:
            if proc.poll() is not None:
                raise _PreflightFailed(_harmed(proc)) from None
            raise _PreflightFailed(f"failed on a throwaway process ({exc})") from None
        if proc.poll() is not None:
            raise _PreflightFailed(_harmed(proc))
        if ours is not None:
            ours.sendall(b"x")
        else:
            assert proc.stdin is not None
            proc.stdin.write(b"x\n")
            proc.stdin.flush()
        try:
            out, err = proc.communicate(timeout=max(2.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise _PreflightFailed("the throwaway process's wait no longer ended when woken") from None
        if proc.returncode != 0 or out.decode("utf-8", "replace").split()[-2:] != ["bye", kind]:
            raise _PreflightFailed(_harmed(proc, err))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        for end in (ours, theirs):
            if end is not None:
                end.close()
        status.remove()
        shutil.rmtree(socket_dir, ignore_errors=True)


def inject(pid: int, socket_dir: str | None = None, timeout: float = 10.0) -> str:
    """Start an agent inside the running Python process `pid`; returns its socket path once it answers.

    If `pid` already has an agent, its socket path is returned and nothing is injected. `socket_dir` is
    passed to the agent (None: the target's own default). Raises InjectError (a one-line reason with the
    fix) on every failure; the target keeps running in every case.
    """
    from perftop.collectors.discovery import find_agent

    if not 0 < pid <= paths.PID_MAX:
        raise InjectError(
            f"PID must be a positive whole number up to {paths.PID_MAX}, not {pid}", bad_input=True
        )
    if not paths.pid_alive(pid):
        raise InjectError(
            f"no process with PID {pid} (it exited, or never existed): check the PID with ps", bad_input=True
        )
    existing = find_agent(pid, socket_dir)
    if existing is not None:
        return existing
    if pid == os.getpid():
        raise InjectError("cannot inject into perftop itself: call perftop.start() instead", bad_input=True)
    target = inspect_target(pid)
    if target.version is not None and target.version < MIN_PYTHON:
        raise InjectError(
            f"PID {pid} runs Python {_version_text(target)}; the agent needs 3.10 or later: upgrade the "
            "app's Python",
            bad_input=True,
        )
    if _state(pid) == "T":
        raise InjectError(
            f"PID {pid} ({target.name}) is stopped (SIGSTOP, or Ctrl-Z): nothing could run in it; resume it "
            f"first (kill -CONT {pid}), then try again",
            bad_input=True,
        )
    deadline = time.monotonic() + timeout
    status = _Status(target.uid)
    cleanup: list[str] = []
    try:
        code = bootstrap_code(socket_dir, status.path)
        use_remote_exec = (
            target.version is not None and target.version >= REMOTE_EXEC_PYTHON and target.exe_is_python
        )
        if use_remote_exec:
            cleanup.append(_run_remote_exec(target, code, deadline))
        else:
            _inject_by_ptrace(target, code, deadline, timeout)
        return _wait_for_agent(target, socket_dir, status, deadline, timeout)
    finally:
        status.remove()
        for path in cleanup:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _answers(path: str) -> bool:
    """Whether the agent at `path` completes a handshake (its socket file exists before it listens)."""
    from perftop.collectors.agent_client import AgentClient, AgentError

    try:
        AgentClient(path, timeout=2.0).close()
    except AgentError:
        return False
    return True


def _wait_for_agent(
    target: Target, socket_dir: str | None, status: _Status, deadline: float, timeout: float
) -> str:
    """The socket of the injected agent once it answers; InjectError if it reports a failure, the
    target dies, or the deadline passes."""
    from perftop.collectors.discovery import find_agent

    pid = target.pid
    while True:
        outcome = status.read()
        found = find_agent(pid, socket_dir)
        if found is None and outcome.startswith("ok "):
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.stat(outcome[3:]).st_mode):
                    found = outcome[3:]
        if found is not None and _answers(found):
            return found
        if outcome.startswith("error"):
            raise InjectError(
                f"the agent could not start inside PID {pid}: {outcome[6:]}: fix that, or start the agent "
                "in the app (perftop run)"
            )
        if not paths.pid_alive(pid):
            raise InjectError(f"PID {pid} exited before its agent answered")
        if time.monotonic() >= deadline:
            if found is not None:
                raise InjectError(
                    f"the agent started inside PID {pid} but did not answer within {timeout:g} s (the app's "
                    f"threads keep the GIL busy): try again in a moment: perftop --pid {pid}"
                )
            raise InjectError(
                f"PID {pid} did not run the injected code within {timeout:g} s (its main thread may be busy "
                "in a long C call): try again, or start the agent in the app (perftop run)"
            )
        time.sleep(0.02)
