"""Nothing perftop inject runs on a target's behalf runs as root (issue 10, item 2).

The 3.14+ path runs the target's own interpreter (/proc/PID/exe) to call sys.remote_exec, and the
preflight runs it for its throwaway process: a file the target's user may control, loading that user's
standard library. Both go through `as_target`; these tests run a real target as user `nobody` (with a
supplementary group) and see, from inside the child, who it runs as. No CPython 3.14 is needed: the
helper is given a stand-in script.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from perftop.launch.inject import InjectError, inject, run_target_interpreter
from tests.foreign_user import foreign_env, interpreter_for, nobody_python, run_as
from tests.security.test_inject_safety import AMX

REPO = Path(__file__).resolve().parent.parent.parent
WHOAMI = (
    "import os; print(os.getuid(), os.geteuid(), os.getgid(), os.getegid(), "
    "sorted(os.getgroups()), os.readlink('/proc/self/exe'))"
)


def nobody() -> tuple[int, int, int, str]:
    """uid, gid, an extra group, and a Python that nobody can run with perftop; skips if not root."""
    uid, gid, exe = nobody_python("to run the target as user nobody")
    return uid, gid, grp.getgrnam("users").gr_gid, exe


@pytest.fixture
def foreign_target() -> Iterator[tuple[subprocess.Popen[bytes], int, int, int]]:
    """A Python process of user nobody, in its own group and the group `users`, reading stdin."""
    uid, gid, extra, exe = nobody()
    proc = subprocess.Popen(
        [exe, "-c", "import sys; print('ready', flush=True); sys.stdin.readline(); print('bye')"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=foreign_env(),
        cwd="/",
        user=uid,
        group=gid,
        extra_groups=[extra],
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    yield proc, uid, gid, extra
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


def test_target_interpreter_runs_as_the_target_user(
    foreign_target: tuple[subprocess.Popen[bytes], int, int, int],
) -> None:
    proc, uid, gid, extra = foreign_target
    result = run_target_interpreter(proc.pid, ["-I", "-S", "-c", WHOAMI], timeout=60)
    assert result.returncode == 0, result.stderr
    exe = os.readlink(f"/proc/{proc.pid}/exe")
    assert result.stdout.split() == [str(uid), str(uid), str(gid), str(gid), f"[{extra}]", exe]


def test_preflight_probe_runs_as_the_target_user(
    foreign_target: tuple[subprocess.Popen[bytes], int, int, int],
) -> None:
    # Watches /proc while injecting for the throwaway process (inject_probe.py), and records who it is.
    proc, uid, gid, extra = foreign_target
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for entry in os.listdir("/proc"):
                try:
                    if b"inject_probe.py" in Path(f"/proc/{entry}/cmdline").read_bytes():
                        status = Path(f"/proc/{entry}/status").read_text().splitlines()
                        seen.extend(
                            " ".join(x.split()) for x in status if x.startswith(("Uid:", "Gid:", "Groups:"))
                        )
                except OSError:
                    continue
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        path = inject(proc.pid, timeout=60)
    finally:
        done.set()
        watcher.join()
    assert os.stat(path).st_uid == uid
    assert seen, "the preflight's throwaway process was never seen"
    assert set(seen) == {f"Uid: {uid} {uid} {uid} {uid}", f"Gid: {gid} {gid} {gid} {gid}", f"Groups: {extra}"}
    assert proc.stdin is not None
    proc.stdin.write(b"x\n")
    proc.stdin.flush()
    assert proc.communicate(timeout=30)[0] == b"bye\n"


def test_another_user_may_not_run_the_target_interpreter(
    foreign_target: tuple[subprocess.Popen[bytes], int, int, int],
) -> None:
    # Root's own process, seen from user nobody: refused, not run as nobody.
    _, uid, gid, _ = foreign_target
    exe = interpreter_for(uid, gid)
    assert exe is not None
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        code = (
            "import sys\nfrom perftop.launch.inject import InjectError, run_target_interpreter\n"
            f"try:\n    run_target_interpreter({holder.pid}, ['-c', 'pass'], 30)\n"
            "except InjectError as exc:\n    print('refused', exc)\n"
        )
        result = run_as(uid, gid, exe, "-c", code)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        f"refused PID {holder.pid} runs as root (uid 0): perftop would have to run"
    )


def test_root_never_parses_a_c_library_another_user_controls(tmp_path: Path) -> None:
    # pyinjector reads the target's libc to find dlopen: as root it must not read one that user nobody
    # owns (a crafted ELF file); the target is then left to gdb (or, where gdb is unsafe, refused).
    if os.geteuid() != 0:
        pytest.skip("needs root")
    libc = next(
        line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "/libc.so" in line
    )
    own = tmp_path / "libs"
    own.mkdir()
    shutil.copy(libc, own / os.path.basename(libc))
    os.chown(own / os.path.basename(libc), pwd.getpwnam("nobody").pw_uid, -1)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-S",
            "-c",
            "import sys; print('ready', flush=True); sys.stdin.readline(); print('bye')",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "LD_LIBRARY_PATH": str(own)},
        cwd="/",
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        assert str(own) in Path(f"/proc/{proc.pid}/maps").read_text()
        try:
            path = inject(proc.pid, str(tmp_path), timeout=60)
        except InjectError as exc:
            assert AMX or shutil.which("gdb") is None, exc
            assert f"pyinjector: its C library {own}/" in str(exc)
        else:
            assert os.path.exists(path)
        assert "perftop-agent-loader" not in Path(f"/proc/{proc.pid}/maps").read_text()
        assert proc.stdin is not None
        proc.stdin.write(b"x\n")
        proc.stdin.flush()
        assert proc.communicate(timeout=30)[0] == b"bye\n"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_a_user_without_a_home_injects_into_its_own_process() -> None:
    # As nobody (home /nonexistent: no cache, so the library is built for this injection), the usual
    # unprivileged case: pyinjector into one's own idle process, after a preflight as oneself.
    uid, gid, _, exe = nobody()
    target = subprocess.Popen(
        [exe, "-S", str(REPO / "tests" / "targets" / "inj_target.py"), "stdin", "/nonexistent/stop"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=foreign_env(),
        cwd="/",
        user=uid,
        group=gid,
        extra_groups=[],
    )
    try:
        assert target.stdout is not None and target.stdin is not None
        assert int(target.stdout.readline()) == target.pid and target.stdout.readline() == b"ready\n"
        client = str(REPO / "tests" / "targets" / "inj_client.py")
        result = run_as(uid, gid, exe, client, str(target.pid), "", timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"ok /tmp/perftop-{uid}/{target.pid}.sock\n"
        assert "/perftop-agent-loader.so" in Path(f"/proc/{target.pid}/maps").read_text()
        target.stdin.write(b"stop\n")
        target.stdin.flush()
        assert target.communicate(timeout=30)[0] == b"bye\n"
    finally:
        if target.poll() is None:
            target.kill()
        target.communicate(timeout=30)
