"""Benchmark (run by hand): what the perftop TUI itself costs, in a real terminal, beside glances and htop.

    .venv/bin/python tests/perf/bench_tui.py [--seconds 30] [--launches 5] [--size 120x40]
        [--glances /tmp/glances-venv/bin/glances] [--no-glances] [--no-htop] [--json FILE] [--profile DIR]
        [--only list|pid|demo|workers ...] [--workers 8]

Each program runs in tmux on a private server (`tmux -L`), at --interval 1 (glances `-t 1`, htop `-d 10`):

- perftop (process list): plain `perftop`: the system pane and the process list.
- perftop --pid CHILD: the system pane and the process pane of an idle Python child started here.
- perftop demo: `perftop demo --threads 2`: the process pane of the instrumented demo service, whose agent
  perftop polls each tick. Its launch time includes starting the demo service and waiting for its agent.
- perftop --pid WORKER / --pid MASTER (`--only workers`): a gunicorn of --workers workers (default 8) under
  `perftop run` (tests/targets/prefork_app.py, a light load of about 20 requests a second spread over the
  workers): attached to one worker (one process, one agent), then to the master (the tree of all of them,
  the worker table, every worker's agent polled and merged each tick). The goal: the master's figure under
  twice the single worker's.

Figures, per program:
- CPU: utime+stime of the program's own process (the tmux pane's process, found with `display -p
  '#{pane_pid}'`) from /proc/PID/stat over --seconds, starting 2 s after the first full frame so the start-up
  is left out; as a percentage of one core. Its children (the demo service) are reported apart.
- RSS: VmRSS at the end of that window, and VmHWM (the peak since launch), from /proc/PID/status.
- First full frame: from launch (just before tmux starts the program) until capture-pane, polled every
  10 ms, shows both the system pane with data and the process list (or the process pane) with data; the
  median of --launches launches. `python -c "import textual.app"` is timed for reference, once before each
  launch too: the first-frame ratios divide by the median of those, taken under the same load.
- Ratios, printed beside the issue's targets (TARGETS): `perftop --pid` CPU / `glances -t 1` CPU, and
  first full frame / `import textual.app` for `perftop` and `perftop --pid`.

perftop is compiled to bytecode first (`compileall`), as an installed package is: a shell with
PYTHONDONTWRITEBYTECODE set would otherwise have every launch compile each module it imports.

Other processes on this machine (tests of other work) add noise: the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLK_TCK = os.sysconf("SC_CLK_TCK")
SETTLE_S = 2.0
"""Seconds between the first full frame and the start of the CPU window."""
POLL_S = 0.01

LIST_LABEL = "perftop (system + process list)"
PID_LABEL = "perftop --pid (system + process pane)"
GLANCES_LABEL = "glances -t 1"
HTOP_LABEL = "htop -d 10"
TARGETS = {"pid_cpu_vs_glances": 0.5, "list_frame_vs_textual": 2.0, "pid_frame_vs_textual": 2.5}
"""The issue's targets (#15): the viewer's CPU at most half of glances' in the same run, and its first full
frame at most this many times the import of textual.app."""

_SYSTEM_DATA = re.compile(r"\d+\.\d%\s+load \d")
_LIST_DATA = re.compile(r"processes \(([1-9]\d*)\)")
_PROCESS_DATA = re.compile(r"pid (\d+) · .*\n(?:.*\n)*.*nofile")

Predicate = Callable[[str], bool]


@dataclass
class Result:
    """The figures of one program."""

    label: str
    cpu_percent: float
    children_cpu_percent: float | None
    rss_mb: float
    hwm_mb: float
    first_frame_s: float | None = None
    first_frames_s: list[float] = field(default_factory=list)
    seconds: float = 0.0
    textual_import_s: float | None = None
    """`python -c "import textual.app"` timed between this program's launches (median): the first-frame
    ratio compares the two under the same load, which on a shared machine changes by the minute."""
    first_frame_cpu_s: list[float] = field(default_factory=list)
    """The program's CPU time (utime + stime) when its first full frame showed, per launch: what the start
    cost, steadier than the wall clock on a loaded machine."""
    textual_import_cpu_s: float | None = None
    """The CPU time of `python -c "import textual.app"` (median of those timed between the launches)."""


class Terminal:
    """A private tmux server with a fixed-size window per launched program."""

    def __init__(self, width: int, height: int) -> None:
        if shutil.which("tmux") is None:
            raise SystemExit("tmux is not installed (apt-get install tmux)")
        self.server = f"perftop-bench-{uuid.uuid4().hex[:8]}"
        self.width, self.height = width, height
        # A placeholder session keeps the server up, so launches do not pay for starting it.
        self._tmux("new-session", "-d", "-s", "keep", "-x", "20", "-y", "5", "sleep 100000")
        self._n = 0

    def _tmux(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-L", self.server, *args], capture_output=True, text=True, timeout=30, check=False
        )
        return out.stdout

    def launch(self, argv: list[str], env: dict[str, str] | None = None) -> tuple[str, float]:
        """Start `argv` in a new session; its name and the launch time (monotonic, just before tmux)."""
        self._n += 1
        session = f"s{self._n}"
        assign = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        command = f"exec env {assign} {shlex.join(argv)}"
        start = time.monotonic()
        self._tmux(
            "new-session", "-d", "-s", session, "-x", str(self.width), "-y", str(self.height),
            "-c", str(REPO), command,
        )  # fmt: skip
        return session, start

    def pid(self, session: str) -> int:
        return int(self._tmux("display", "-p", "-t", session, "#{pane_pid}").strip())

    def screen(self, session: str) -> str:
        return self._tmux("capture-pane", "-p", "-t", session)

    def send(self, session: str, *keys: str) -> None:
        self._tmux("send-keys", "-t", session, *keys)

    def wait_screen(self, session: str, predicate: Predicate, timeout: float = 30.0) -> float:
        """Poll the screen every 10 ms until `predicate` holds; the monotonic time it first did."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen(session)
            if predicate(text):
                return time.monotonic()
            time.sleep(POLL_S)
        raise RuntimeError(f"screen never matched within {timeout}s; last screen:\n{text}")

    def close(self, session: str, pid: int, keys: tuple[str, ...] = ("q",)) -> None:
        """Quit the program with `keys`; kill it and what it started if it has not exited in 10 s."""
        family = [pid, *descendants(pid)]
        self.send(session, *keys)
        if not wait_gone(pid, 10.0):
            for p in family:
                with suppress(ProcessLookupError, PermissionError):
                    os.kill(p, signal.SIGKILL)
        for p in family[1:]:
            if not wait_gone(p, 10.0):
                with suppress(ProcessLookupError, PermissionError):
                    os.kill(p, signal.SIGKILL)
        self._tmux("kill-session", "-t", session)

    def kill(self) -> None:
        """Stop the server and remove its socket file, which tmux leaves behind."""
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True, check=False)
        tmpdir = os.environ.get("TMUX_TMPDIR", "/tmp")
        with suppress(OSError):
            os.unlink(os.path.join(tmpdir, f"tmux-{os.getuid()}", self.server))


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}") or _state(pid) == "Z":
            return True
        time.sleep(0.05)
    return False


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: field 3 (state) is [0]."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2 :].decode().split()


def _state(pid: int) -> str:
    try:
        return _stat_fields(pid)[0]
    except (OSError, ValueError):
        return "?"


def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid` in clock ticks."""
    fields = _stat_fields(pid)
    return int(fields[11]) + int(fields[12])


def descendants(pid: int) -> list[int]:
    """Every live process below `pid`, from the ppid field of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = int(_stat_fields(int(name))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MB."""
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def measure(pid: int, seconds: float) -> tuple[float, float | None, float, float]:
    """CPU % of one core of `pid` and of its descendants together over `seconds`; its RSS and peak RSS."""
    kids = descendants(pid)
    start = time.monotonic()
    own0 = cpu_ticks(pid)
    kids0 = {k: cpu_ticks(k) for k in kids}
    time.sleep(seconds)
    own1 = cpu_ticks(pid)
    kids_delta = 0
    for k, before in kids0.items():
        with suppress(ProcessLookupError, PermissionError):
            try:
                kids_delta += cpu_ticks(k) - before
            except OSError:
                continue
    wall = time.monotonic() - start
    rss, hwm = memory_mb(pid)
    own = 100.0 * (own1 - own0) / CLK_TCK / wall
    return own, (100.0 * kids_delta / CLK_TCK / wall if kids else None), rss, hwm


def run_program(
    term: Terminal,
    label: str,
    argv: list[str],
    ready: Predicate,
    launches: int,
    seconds: float,
    env: dict[str, str],
    quit_keys: tuple[str, ...] = ("q",),
    timed: bool = True,
    profile_dir: Path | None = None,
) -> Result:
    """Launch `argv` `launches` times, timing the first full frame; measure the last launch over `seconds`."""
    frames: list[float] = []
    frame_cpu: list[float] = []
    references: list[float] = []
    reference_cpu: list[float] = []
    for n in range(launches):
        if timed:
            references.append(import_time("import textual.app", runs=1))
            reference_cpu.append(import_cpu("import textual.app"))
        session, start = term.launch(argv, env)
        pid = term.pid(session)
        try:
            frames.append(term.wait_screen(session, ready) - start)
            frame_cpu.append(cpu_ticks(pid) / CLK_TCK)
            if n < launches - 1:
                continue
            time.sleep(SETTLE_S)
            own, kids, rss, hwm = measure(pid, seconds)
            if profile_dir is not None:
                profile(pid, label, profile_dir, seconds)
        finally:
            term.close(session, pid, quit_keys)
    first = statistics.median(frames) if timed else None
    reference = statistics.median(references) if references else None
    return Result(
        label,
        own,
        kids,
        rss,
        hwm,
        first,
        frames if timed else [],
        seconds,
        textual_import_s=reference,
        first_frame_cpu_s=frame_cpu if timed else [],
        textual_import_cpu_s=statistics.median(reference_cpu) if reference_cpu else None,
    )


def profile(pid: int, label: str, out_dir: Path, seconds: float) -> None:
    """py-spy record of `pid` (not during the CPU window, which py-spy would disturb)."""
    py_spy = shutil.which("py-spy") or "/tmp/pyspy-venv/bin/py-spy"
    if not os.path.exists(py_spy):
        sys.stdout.write("py-spy not found (python3 -m venv /tmp/pyspy-venv && .../pip install py-spy)\n")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    for fmt, ext in (("speedscope", "json"), ("raw", "txt")):
        subprocess.run(
            [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
             "--nonblocking", "--threads", "--format", fmt, "-o", str(out_dir / f"{slug}.{ext}")],
            capture_output=True, check=False,
        )  # fmt: skip


def import_cpu(code: str) -> float:
    """The CPU time (user + system) of one `python -c code`, from the children's rusage."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def import_time(code: str, runs: int = 5) -> float:
    """Median wall time of `python -c code` in seconds."""
    times = []
    for _ in range(runs):
        start = time.monotonic()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
        times.append(time.monotonic() - start)
    return statistics.median(times)


def machine() -> dict[str, object]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "processes": sum(1 for n in os.listdir("/proc") if n.isdigit()),
        "load_avg": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def child_process() -> subprocess.Popen[bytes]:
    """An idle Python child holding a few files and a TCP listener with one connection."""
    code = (
        "import os, socket, sys, time\n"
        "files = [open(os.devnull) for _ in range(8)]\n"
        "srv = socket.create_server(('127.0.0.1', 0))\n"
        "cli = socket.create_connection(srv.getsockname()); acc = srv.accept()\n"
        "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline() != b"ready\n":
        proc.kill()
        raise RuntimeError("the child did not start")
    return proc


class Gunicorn:
    """A gunicorn of `workers` workers under `perftop run`, each worker with its agent, lightly loaded."""

    RATE = 20.0
    """Requests a second of the load, one client."""

    def __init__(self, workers: int) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="perftop-bench-")
        self.socket_dir = os.path.join(self.tmp.name, "sockets")
        db = os.path.join(self.tmp.name, "app.sqlite")
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE prefork_items (id INTEGER PRIMARY KEY, name TEXT)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        env = {**os.environ, "PERFTOP_SOCKET_DIR": self.socket_dir, "PREFORK_DB": db}
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        cmd = [sys.executable, "-m", "perftop", "run", "--", gunicorn, "-w", str(workers)]
        cmd += ["-b", f"127.0.0.1:{self.port}", "--chdir", str(REPO / "tests" / "targets")]
        self.log = open(os.path.join(self.tmp.name, "gunicorn.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([*cmd, "prefork_app:application"], env=env, stderr=self.log, cwd=REPO)
        self.workers = workers
        self._stop = threading.Event()
        self._load = threading.Thread(target=self._run_load, daemon=True)
        deadline = time.monotonic() + 120
        while len(self.agents()) < workers + 1 or len(self.children()) < workers:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"gunicorn did not start {workers} workers with agents")
            time.sleep(0.2)
        self._load.start()

    def agents(self) -> list[str]:
        with suppress(OSError):
            return [n for n in os.listdir(self.socket_dir) if n.endswith(".sock")]
        return []

    def children(self) -> list[int]:
        return sorted(p for p in descendants(self.proc.pid) if _state(p) != "Z")

    def _run_load(self) -> None:
        while not self._stop.wait(1.0 / self.RATE):
            with suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=10).read()

    def close(self) -> None:
        self._stop.set()
        if self._load.is_alive():
            self._load.join(15)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.tmp.cleanup()


def table(results: list[Result], info: dict[str, object]) -> str:
    load = " ".join(f"{x:.2f}" for x in info["load_avg"])  # type: ignore[attr-defined]
    lines = [
        f"Machine: {info['nproc']} CPUs ({info['cpu_model']}), {info['processes']} processes, Linux "
        f"{info['kernel']}, Python {info['python']}; load average {load} at the start, "
        f"{info['load_end']} at the end. Each program at a 1 s refresh for {results[0].seconds:g} s in tmux "
        f"{info['size']}.",
        "",
        f"| program | CPU, % of one core | RSS (peak) | first full frame (median of {info['launches']}) |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        kids = "" if r.children_cpu_percent is None else f" (+{r.children_cpu_percent:.2f}% its child)"
        first = "-" if r.first_frame_s is None else f"{r.first_frame_s:.2f} s"
        lines.append(
            f"| {r.label} | {r.cpu_percent:.2f}%{kids} | {r.rss_mb:.0f} MB ({r.hwm_mb:.0f} MB) | {first} |"
        )
    lines += [
        "",
        f'Reference: `python -c pass` {info["python_start_s"]:.3f} s, `python -c "import textual.app"` '
        f'{info["textual_import_s"]:.3f} s, `python -c "import perftop.tui.app"` '
        f"{info['perftop_import_s']:.3f} s (medians of 5).",
    ]
    return "\n".join(lines)


def ratios(results: list[Result], info: dict[str, object]) -> dict[str, float | None]:
    """The figures the targets are about, as ratios within this run (None where a program was skipped)."""
    by_label = {r.label: r for r in results}

    def cpu(a: str, b: str) -> float | None:
        ra, rb = by_label.get(a), by_label.get(b)
        return ra.cpu_percent / rb.cpu_percent if ra and rb and rb.cpu_percent > 0 else None

    def frame(a: str) -> float | None:
        r = by_label.get(a)
        if r is None or r.first_frame_s is None:
            return None
        textual = r.textual_import_s or float(info["textual_import_s"])  # type: ignore[arg-type]
        return r.first_frame_s / textual if textual > 0 else None

    return {
        "pid_cpu_vs_glances": cpu(PID_LABEL, GLANCES_LABEL),
        "pid_cpu_vs_htop": cpu(PID_LABEL, HTOP_LABEL),
        "list_frame_vs_textual": frame(LIST_LABEL),
        "pid_frame_vs_textual": frame(PID_LABEL),
    }


def ratio_table(values: dict[str, float | None]) -> str:
    """The ratios beside their targets."""
    names = {
        "pid_cpu_vs_glances": "`perftop --pid` CPU / `glances -t 1` CPU",
        "pid_cpu_vs_htop": "`perftop --pid` CPU / `htop -d 10` CPU",
        "list_frame_vs_textual": '`perftop` first full frame / `python -c "import textual.app"`',
        "pid_frame_vs_textual": '`perftop --pid` first full frame / `python -c "import textual.app"`',
    }
    lines = ["| ratio (this run) | value | target |", "|---|---:|---:|"]
    for key, name in names.items():
        value = values.get(key)
        shown = "-" if value is None else f"{value:.2f}x"
        target = TARGETS.get(key)
        if target is None:
            verdict = "(reference)"
        elif value is None:
            verdict = f"<= {target:g}x (not measured)"
        else:
            verdict = f"<= {target:g}x ({'met' if value <= target else 'NOT met'})"
        lines.append(f"| {name} | {shown} | {verdict} |")
    return "\n".join(lines)


def run_workers(term: Terminal, perftop: list[str], workers: int, common: dict[str, object]) -> list[Result]:
    """perftop attached to one worker of a gunicorn, then to its master (the tree of every worker)."""
    server = Gunicorn(workers)
    try:
        worker = server.children()[0]
        base = [*perftop, "--interval", "1", "--socket-dir", server.socket_dir]

        def tree_ready(s: str) -> bool:
            return bool(_SYSTEM_DATA.search(s) and f"tree of {workers + 1}:" in s and " agent " in s)

        one = run_program(
            term,
            "perftop --pid WORKER (one process, one agent)",
            [*base, "--pid", str(worker)],
            lambda s: bool(_SYSTEM_DATA.search(s) and f"process {worker}" in s and "nofile" in s),
            **common,
        )  # type: ignore[arg-type]
        tree = run_program(
            term,
            f"perftop --pid MASTER ({workers} workers, {workers + 1} agents)",
            [*base, "--pid", str(server.proc.pid)],
            tree_ready,
            **common,
        )  # type: ignore[arg-type]
    finally:
        server.close()
    return [one, tree]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="CPU window per program (default 30)")
    parser.add_argument("--launches", type=int, default=5, help="launches timed per perftop mode (default 5)")
    parser.add_argument("--size", default="120x40", help="terminal size, e.g. 100x30 (default 120x40)")
    parser.add_argument("--glances", default="/tmp/glances-venv/bin/glances", help="the glances to run")
    parser.add_argument("--no-glances", action="store_true")
    parser.add_argument("--no-htop", action="store_true")
    parser.add_argument(
        "--only", choices=("list", "pid", "demo", "workers"), action="append", help="perftop modes to run"
    )
    parser.add_argument(
        "--workers", type=int, default=8, help="gunicorn workers of --only workers (default 8)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--profile", type=Path, help="after each perftop window, py-spy record into this dir")
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    modes = args.only or ["list", "pid", "demo", "workers"]

    # perftop runs from bytecode, as an installed package does (pip compiles it) and as textual does here:
    # where PYTHONDONTWRITEBYTECODE is set, every launch would otherwise compile each module it imports.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "perftop")], check=True)
    info = machine()
    info.update(size=args.size, launches=args.launches)
    info["python_start_s"] = import_time("pass")
    info["textual_import_s"] = import_time("import textual.app")
    info["perftop_import_s"] = import_time("import perftop.tui.app")

    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "VIRTUAL_ENV", "LANG")}
    env.update(TERM="xterm-256color", COLORTERM="truecolor")
    perftop = [sys.executable, "-m", "perftop"]
    term = Terminal(width, height)
    child = child_process()
    results: list[Result] = []
    try:

        def has_list(s: str) -> bool:
            return bool(_SYSTEM_DATA.search(s) and _LIST_DATA.search(s))

        def has_process(pid: int | None) -> Predicate:
            def ready(s: str) -> bool:
                m = _PROCESS_DATA.search(s)
                return bool(_SYSTEM_DATA.search(s) and m and (pid is None or int(m.group(1)) == pid))

            return ready

        common = dict(launches=args.launches, seconds=args.seconds, env=env, profile_dir=args.profile)
        if "list" in modes:
            results.append(
                run_program(term, LIST_LABEL, [*perftop, "--interval", "1"],
                            has_list, **common)  # type: ignore[arg-type]
            )  # fmt: skip
        if "pid" in modes:
            results.append(
                run_program(term, PID_LABEL,
                            [*perftop, "--interval", "1", "--pid", str(child.pid)],
                            has_process(child.pid), **common)  # type: ignore[arg-type]
            )  # fmt: skip
        if "demo" in modes:
            results.append(
                run_program(term, "perftop demo (system + process pane + agent)",
                            [*perftop, "demo", "--threads", "2", "--interval", "1"],
                            has_process(None), **common)  # type: ignore[arg-type]
            )  # fmt: skip
        if "workers" in modes:
            results += run_workers(term, perftop, args.workers, common)
        if not args.no_glances:
            if os.path.exists(args.glances):
                results.append(
                    run_program(term, GLANCES_LABEL, [args.glances, "-t", "1"],
                                lambda s: "CPU" in s and "MEM" in s and "PID" in s, 1, args.seconds, env,
                                timed=False)
                )  # fmt: skip
            else:
                sys.stdout.write(f"glances not found at {args.glances}: skipped\n")
        if not args.no_htop:
            htop = shutil.which("htop")
            if htop:
                results.append(
                    run_program(term, HTOP_LABEL, [htop, "-d", "10"], lambda s: "PID" in s and "Load" in s,
                                1, args.seconds, env, quit_keys=("q",), timed=False)
                )  # fmt: skip
            else:
                sys.stdout.write("htop not installed (apt-get install -y htop): skipped\n")
    finally:
        term.kill()
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()

    info["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    values = ratios(results, info)
    sys.stdout.write(table(results, info) + "\n\n" + ratio_table(values) + "\n\n")
    for r in results:
        if r.first_frames_s:
            frames = ", ".join(f"{x:.3f}" for x in r.first_frames_s)
            sys.stdout.write(
                f"  {r.label}: first full frames {frames} s; import textual.app between them, median "
                f"{r.textual_import_s or 0:.3f} s\n"
            )
        if r.first_frame_cpu_s and r.textual_import_cpu_s:
            cpu = ", ".join(f"{x:.2f}" for x in r.first_frame_cpu_s)
            median = statistics.median(r.first_frame_cpu_s)
            sys.stdout.write(
                f"  {r.label}: CPU time at the first full frame {cpu} s, median {median:.2f} s; import "
                f"textual.app {r.textual_import_cpu_s:.3f} s of CPU: {median / r.textual_import_cpu_s:.2f}x\n"
            )
    if args.json:
        doc = {"machine": info, "results": [asdict(r) for r in results], "ratios": values, "targets": TARGETS}
        args.json.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
