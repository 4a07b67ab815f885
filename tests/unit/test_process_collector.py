"""ProcessCollector and check_pid against real child processes."""

from __future__ import annotations

import json
import os
import pwd
import resource
import select
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from perftop.collectors.errors import AccessDeniedError, CollectorError, NoSuchProcessError
from perftop.collectors.process import (
    LIMIT_SPECS,
    ProcessCollector,
    SharedReads,
    UserTasks,
    _parse_proc_limits,
    check_pid,
    count_connections,
    count_user_tasks,
)
from tests.foreign_user import dropper, foreign_env, interpreter_for, run_as
from tests.helpers import Holder, kill, wait_for

TARGETS = Path(__file__).resolve().parent.parent / "targets"
HOLDER = str(TARGETS / "coll_holder.py")
READER = str(TARGETS / "coll_reader.py")
REPO = str(Path(__file__).resolve().parent.parent.parent)


def _expected(value: int) -> int | None:
    return None if value == resource.RLIM_INFINITY else value


def test_limits_of_a_child_with_nofile_1234(holder: Holder) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def lower_nofile() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1234, hard))

    child = holder("--files", "50", preexec_fn=lower_nofile)
    sample = ProcessCollector(child.pid).sample()

    names = [lim.name for lim in sample.limits]
    assert names[:8] == ["nofile", "nproc", "as", "data", "stack", "rss", "memlock", "core"]
    psutil_names = {n[len("RLIMIT_") :].lower() for n in dir(psutil) if n.startswith("RLIMIT_")}
    assert set(names) == psutil_names
    assert len(names) == len(set(names))

    nofile = sample.limit("nofile")
    assert nofile is not None
    assert (nofile.soft, nofile.hard) == (1234, _expected(hard))
    assert nofile.used is not None and nofile.used >= 50
    assert nofile.used == sample.num_fds
    assert nofile.ratio == pytest.approx(nofile.used / 1234)

    # Every other limit is inherited from this test process, so it must read the same as ours.
    for spec in LIMIT_SPECS:
        if spec.name == "nofile":
            continue
        soft, hard_ = resource.getrlimit(spec.resource)
        lim = sample.limit(spec.name)
        assert lim is not None
        assert (lim.soft, lim.hard) == (_expected(soft), _expected(hard_)), spec.name

    def used(name: str) -> int:
        lim = sample.limit(name)
        assert lim is not None and lim.used is not None, name
        return lim.used

    assert used("as") == sample.vms_bytes
    assert used("rss") == sample.rss_bytes
    assert 0 < used("data") <= sample.vms_bytes
    assert 0 < used("stack") <= sample.vms_bytes
    assert used("memlock") >= 0
    assert used("sigpending") >= 0
    assert used("cpu") >= 0
    # nproc counts every task of the child's real uid: at least this test process's and the child's threads.
    assert used("nproc") >= psutil.Process().num_threads() + sample.num_threads
    units = {lim.name: lim.unit for lim in sample.limits}
    assert units["as"] == units["data"] == units["stack"] == units["core"] == "bytes"
    assert units["nofile"] == units["nproc"] == ""
    assert units["cpu"] == "s"
    for name in ("core", "fsize", "msgqueue", "locks"):  # listed although their usage is not measurable
        lim = sample.limit(name)
        assert lim is not None and lim.used is None


def test_sample_fields(holder: Holder) -> None:
    child = holder("--files", "5", "--threads", "3")
    ps = psutil.Process(child.pid)
    wait_for(lambda: ps.status() == psutil.STATUS_SLEEPING, 10, "the child to block reading stdin")
    collector = ProcessCollector(child.pid)
    assert collector.pid == child.pid
    sample = collector.sample()
    assert sample.pid == child.pid
    assert sample.name == ps.name()
    assert sample.cmdline == (sys.executable, HOLDER, "--files", "5", "--threads", "3")
    assert sample.status == psutil.STATUS_SLEEPING
    assert sample.username == pwd.getpwuid(os.geteuid()).pw_name
    assert sample.create_time == ps.create_time()
    assert sample.num_threads == 4
    assert sample.num_fds is not None and sample.num_fds >= 5 + 3  # the files, stdio
    assert sample.rss_bytes > 0 and sample.vms_bytes >= sample.rss_bytes
    assert sample.cpu_percent >= 0.0
    if os.path.isdir("/sys/fs/cgroup"):
        assert sample.cgroup is not None
    as_json = sample.to_json()
    assert as_json["limits"]["nofile"]["used"] == sample.num_fds
    json.dumps(as_json)


def test_cpu_percent_of_a_busy_child(holder: Holder) -> None:
    child = holder("--busy")
    collector = ProcessCollector(child.pid)
    wait_for(lambda: collector.sample().cpu_percent > 10.0, 20, "the busy child's CPU to show")


def test_connections_counted_and_sampled_less_often(
    holder: Holder,
) -> None:
    child = holder("--sockets")
    expected = len(psutil.Process(child.pid).net_connections(kind="all"))
    assert expected >= 3  # listener, client, accepted server side

    rare = ProcessCollector(child.pid, connections_every_s=3600)
    first = rare.sample()
    second = rare.sample()
    assert first.num_connections == expected
    assert first.connections_sampled_at is not None
    assert second.connections_sampled_at == first.connections_sampled_at
    assert second.num_connections == expected

    every = ProcessCollector(child.pid, connections_every_s=0)
    a = every.sample()
    b = every.sample()
    assert a.connections_sampled_at is not None and b.connections_sampled_at is not None
    assert b.connections_sampled_at > a.connections_sampled_at
    assert b.num_connections == expected


_SOCKETS_CHILD = """
import os, socket, sys
held = []
listener = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(listener.getsockname())
held += [listener, client, listener.accept()[0]]             # 3 TCP over IPv4
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 0))
held.append(udp)                                           # 1 UDP
a, b = socket.socketpair()
held += [a, b, os.dup(a.fileno())]                         # 2 unix sockets, one of them on 2 fds: 3
held.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW))  # not a connection
held.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))  # unbound: in no table
six = 0
if socket.has_ipv6 and os.path.exists("/proc/net/tcp6"):
    try:
        v6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
        held.append(v6)
        six = 1
    except OSError:
        pass
sys.stdout.write(f"ready {3 + 1 + 3 + six}\\n")
sys.stdout.flush()
sys.stdin.read()
"""


def test_count_connections_matches_psutil() -> None:
    """Inet sockets once, unix sockets once per fd, netlink and unbound sockets not at all, as psutil."""
    child = subprocess.Popen(
        [sys.executable, "-c", _SOCKETS_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 20)
        assert ready
        word, expected = child.stdout.readline().split()
        assert word == b"ready"
        assert count_connections(child.pid) == int(expected)
        assert count_connections(child.pid) == len(psutil.Process(child.pid).net_connections(kind="all"))
        collector = ProcessCollector(child.pid, connections_every_s=0)
        assert collector.sample().num_connections == int(expected)
    finally:
        kill(child)
    with pytest.raises(FileNotFoundError):
        count_connections(child.pid)


def test_count_connections_of_a_process_without_sockets(holder: Holder) -> None:
    child = holder("--files", "2")
    assert count_connections(child.pid) == 0
    assert ProcessCollector(child.pid).sample().num_connections == 0


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_no_such_process() -> None:
    pid = _dead_pid()
    with pytest.raises(NoSuchProcessError) as info:
        check_pid(pid)
    assert str(info.value) == f"no process with PID {pid}"
    with pytest.raises(NoSuchProcessError):
        ProcessCollector(pid)
    with open("/proc/sys/kernel/pid_max") as f:
        beyond = int(f.read()) + 1
    for bad in (beyond, 0, -5):
        with pytest.raises(NoSuchProcessError, match=f"no process with PID {bad}"):
            check_pid(bad)
    assert issubclass(NoSuchProcessError, CollectorError)


def test_exit_between_samples(holder: Holder) -> None:
    child = holder()
    collector = ProcessCollector(child.pid)
    collector.sample()
    child.kill()
    child.wait()
    with pytest.raises(NoSuchProcessError, match=f"process {child.pid} has exited"):
        collector.sample()


def test_zombie_counts_as_exited(holder: Holder) -> None:
    child = holder()
    collector = ProcessCollector(child.pid)
    collector.sample()
    child.kill()  # not reaped yet: a zombie
    wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, 10, "the zombie")
    with pytest.raises(NoSuchProcessError):
        collector.sample()
    with pytest.raises(NoSuchProcessError, match="has exited"):
        check_pid(child.pid)
    with pytest.raises(NoSuchProcessError):
        ProcessCollector(child.pid)


def test_proc_limits_parsing_matches_getrlimit() -> None:
    """The fallback used when prlimit is refused (another user's process) reads the same values."""
    with open(f"/proc/{os.getpid()}/limits") as f:
        rows = _parse_proc_limits(f.read())
    for spec in LIMIT_SPECS:
        soft, hard = resource.getrlimit(spec.resource)
        assert rows[spec.proc_limits_label] == (_expected(soft), _expected(hard)), spec.name


NOBODY = 65534
STRANGER = 54321  # a uid with no account, distinct from nobody


def _run_reader_as(uid: int, gid: int, pid: int) -> dict[str, object]:
    exe = interpreter_for(uid, gid)
    if exe is None:
        pytest.skip(f"no Python interpreter that uid {uid} may run and that can import psutil")
    out = run_as(uid, gid, exe, READER, str(pid))
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    assert result["uid"] == uid
    return result


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run processes as other users")
    try:
        pwd.getpwuid(NOBODY)
    except KeyError:
        pytest.skip(f"no user with uid {NOBODY} (nobody)")


@pytest.mark.usefixtures("as_root")
def test_access_denied_for_another_users_process(holder: Holder) -> None:
    exe = interpreter_for(NOBODY, NOBODY)
    if exe is None:
        pytest.skip(f"no Python interpreter that uid {NOBODY} may run and that can import psutil")
    child = holder("--files", "3", exe=exe, preexec_fn=dropper(NOBODY, NOBODY), env=foreign_env())
    owner = pwd.getpwuid(NOBODY).pw_name

    # A stranger may not read nobody's process.
    result = _run_reader_as(STRANGER, STRANGER, child.pid)
    assert result["ok"] is False
    assert result["error"] == "AccessDeniedError"
    message = str(result["message"])
    assert f"cannot read PID {child.pid} (owned by {owner})" in message
    assert f"/proc/{child.pid}/fd" in message
    assert "\n" not in message

    # nobody itself may.
    result = _run_reader_as(NOBODY, NOBODY, child.pid)
    assert result["ok"] is True
    assert isinstance(result["num_fds"], int) and result["num_fds"] >= 3
    assert result["limits"] == len(LIMIT_SPECS)

    # And nobody may not read root's processes (this test process).
    result = _run_reader_as(NOBODY, NOBODY, os.getpid())
    assert result["error"] == "AccessDeniedError"
    assert "(owned by root)" in str(result["message"])

    # Root reads anything; the denial path never fires for it.
    assert issubclass(AccessDeniedError, CollectorError)
    check_pid(child.pid)


@pytest.mark.usefixtures("as_root")
def test_count_user_tasks_counts_the_threads_of_a_uid(holder: Holder) -> None:
    """A child of uid nobody with 5 extra threads adds exactly 6 tasks to nobody's count."""
    exe = interpreter_for(NOBODY, NOBODY)
    if exe is None:
        pytest.skip(f"no Python interpreter that uid {NOBODY} may run and that can import psutil")
    before = count_user_tasks(NOBODY)
    child = holder("--threads", "5", exe=exe, preexec_fn=dropper(NOBODY, NOBODY), env=foreign_env())
    assert count_user_tasks(NOBODY) == before + 6
    kill(child)
    assert count_user_tasks(NOBODY) == before
    assert count_user_tasks(2**31 - 7) == 0


@pytest.mark.usefixtures("as_root")
def test_user_tasks_counts_again_only_when_its_count_is_old(holder: Holder) -> None:
    """Collectors sharing a UserTasks read one count per interval: a child started within it is not seen
    until the count is old; with no interval every call counts afresh."""
    exe = interpreter_for(NOBODY, NOBODY)
    if exe is None:
        pytest.skip(f"no Python interpreter that uid {NOBODY} may run and that can import psutil")
    held, fresh = UserTasks(every_s=3600.0), UserTasks(every_s=0.0)
    before = held.get(NOBODY)
    assert fresh.get(NOBODY) == before
    child = holder("--threads", "5", exe=exe, preexec_fn=dropper(NOBODY, NOBODY), env=foreign_env())
    assert held.get(NOBODY) == before
    assert fresh.get(NOBODY) == before + 6
    shared = SharedReads()
    shared.user_tasks = held
    first = ProcessCollector(child.pid, shared=shared)
    second = ProcessCollector(child.pid, shared=shared)

    def nproc(collector: ProcessCollector) -> int | None:
        return next(limit.used for limit in collector.sample().limits if limit.name == "nproc")

    assert nproc(first) == nproc(second) == before
    assert nproc(ProcessCollector(child.pid)) == before + 6
