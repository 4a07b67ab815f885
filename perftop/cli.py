"""The `perftop` command: argument parsing, bad-input errors, and dispatch to the TUI or a headless form.

Errors are one line on stderr starting `perftop: ` with exit code 2 for bad usage or input and 1 for a
runtime failure; never a traceback (see CLI.md).
"""

from __future__ import annotations

import os
import stat
import sys

from perftop._version import __version__
from perftop.commands._args import fail, hz, parse_pid, seconds, whole

# `perftop run` execs the program as soon as it can: argparse (with re, 13 ms), json and typing are
# imported only where they are needed, never on its way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import NoReturn

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

ACTIONS = ("gc", "memory", "profile", "profile_exact", "threads", "explain")


class UsageError(Exception):
    """Bad usage or bad input: exit code 2."""


class Failure(Exception):
    """A runtime failure: exit code 1."""


def _parser_class() -> type[argparse.ArgumentParser]:
    """argparse's parser with one-line errors (`perftop: ...`, exit 2) instead of usage dumps."""
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise UsageError(f"{message} (see '{self.prog} --help')")

    return _Parser


def _common(p: argparse.ArgumentParser, interval: bool = True) -> None:
    if interval:
        p.add_argument(
            "--interval", type=seconds, default=1.0, metavar="S", help="refresh interval (default 1.0)"
        )
    p.add_argument("--socket-dir", metavar="DIR", help="where agents' sockets are (default as the agent's)")


def _tui_options(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--theme", metavar="NAME", help="theme name or path to a theme file")


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser_class = _parser_class()
    parser = parser_class(
        prog="perftop",
        description="A live performance monitor for Python services.",
        epilog="Run 'perftop COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"perftop {__version__}")
    parser.add_argument("--pid", type=parse_pid, help="attach to this process")
    # `perftop web` runs sessions with this: keys that change the target are refused.
    parser.add_argument("--read-only", action="store_true", help=argparse.SUPPRESS)
    _tui_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=parser_class)

    attach = sub.add_parser("attach", help="the TUI attached to PID", description="The TUI attached to PID.")
    attach.add_argument("attach_pid", type=parse_pid, metavar="PID")
    _tui_options(attach)

    snap = sub.add_parser(
        "snapshot",
        help="one report as JSON or text, then exit",
        description="Sample the host (and a process) over --interval, print one report, exit.",
    )
    snap.add_argument("--pid", type=parse_pid, dest="snap_pid", metavar="PID")
    _common(snap)
    snap.add_argument("--window", type=seconds, metavar="S", help="timings window (default: since start)")
    snap.add_argument("--json", action="store_true", help="print the JSON document of CLI.md")
    snap.add_argument("--no-children", action="store_true", help="do not merge the agents of child processes")
    act = sub.add_parser(
        "action",
        help="run an action inside the attached agent",
        description="Run an action inside PID's agent: gc, memory, profile, profile_exact, threads, or "
        "explain --fingerprint FP. Prints a text report, or the JSON of CLI.md with --json.",
    )
    act.add_argument("--pid", type=parse_pid, dest="act_pid", metavar="PID", required=True)
    act.add_argument("action", choices=ACTIONS, metavar="ACTION", help=", ".join(ACTIONS))
    act.add_argument("--seconds", type=seconds, help="profile duration (default 5)")
    act.add_argument("--hz", type=hz, help="profile sampling rate (default 100, at most 1000)")
    act.add_argument("--threads", help="profile: all (default), main, or a thread name or ident")
    act.add_argument("--include-idle", action="store_true", help="profile: count waiting threads too")
    act.add_argument(
        "--sampler",
        choices=("auto", "in-process", "py-spy"),
        default="auto",
        help="profile: py-spy (from outside, needs ptrace), in-process (the agent), or auto (default: py-spy "
        "where it is installed and allowed, else in-process)",
    )
    act.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="profile: save folded stacks (.folded/.txt) or speedscope JSON (.json)",
    )
    act.add_argument(
        "--frames", type=whole(1, 100), help="memory: traceback depth when tracing starts (default 10)"
    )
    act.add_argument("--top", type=whole(1, 1000), help="memory/profile_exact: how many sites to list")
    act.add_argument("--stop", action="store_true", help="memory: stop tracing and free its memory")
    act.add_argument(
        "--max-blocks",
        type=whole(1, 100_000_000),
        help="memory: snapshot even above this many traced blocks (default 200000; larger stalls the app)",
    )
    act.add_argument(
        "--keep",
        type=whole(10, 86_400),
        metavar="S",
        help="memory: tracing stops by itself S seconds after the last memory action (default 600)",
    )
    act.add_argument("--generation", type=int, choices=(0, 1, 2), help="gc: up to this generation")
    act.add_argument("--count-objects", action="store_true", help="gc: count tracked objects (slow)")
    act.add_argument("--fingerprint", help="explain: the query fingerprint (from the queries list)")
    act.add_argument("--analyze", action="store_true", help="explain: EXPLAIN ANALYZE (runs the SELECT)")
    act.add_argument("--yes", action="store_true", help="explain --analyze: do not ask for confirmation")
    act.add_argument("--json", action="store_true", help="print the JSON result")
    act.add_argument("--socket-dir", metavar="DIR", help="where agents' sockets are")
    act.add_argument(
        "--worker",
        type=parse_pid,
        action="append",
        metavar="PID",
        help="from a parent: run in this worker only (repeatable; default: every worker with an agent)",
    )
    act.add_argument("--no-children", action="store_true", help="run in PID itself, not in its workers")

    run = sub.add_parser(
        "run",
        help="run a Python program with the agent started, no code change",
        description="Run CMD with perftop's agent started in it (and in its Python children), every "
        "SQLAlchemy engine instrumented and every web request of Flask, Django, Starlette/FastAPI, Bottle, "
        "Pyramid or Falcon timed by route. Exit code, signals and stdio pass through. PERFTOP=0 disables.",
    )
    run.add_argument("--name", help="the app name the agent reports")
    run.add_argument("--slow-ms", type=float, help="slow-query threshold (default 100, or $PERFTOP_SLOW_MS)")
    run.add_argument(
        "--no-frameworks",
        action="store_true",
        help="do not time web requests by route nor Celery tasks by name (also PERFTOP_FRAMEWORKS=0)",
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")

    demo = sub.add_parser(
        "demo",
        help="start the built-in demo service and attach to it",
        description="Start the built-in demo service (instrumented, SQLite) and open the TUI attached to "
        "it; quitting the TUI stops the service.",
    )
    demo.add_argument("--no-tui", action="store_true", help="run only the service; print its PID first")
    demo.add_argument("--threads", type=int, default=4, help="worker threads in the service (default 4)")
    demo.add_argument(
        "--url", help="SQLAlchemy URL of a database for the demo (default: a temporary SQLite file)"
    )
    _tui_options(demo)

    inject = sub.add_parser(
        "inject",
        help="start an agent inside a running Python process",
        description="Start perftop's agent inside a running CPython process that has none (pyinjector, "
        "else gdb, on 3.10-3.13, each only after a preflight on a throwaway process of the same "
        "interpreter; sys.remote_exec on 3.14+). The process keeps running; nothing needs installing in it.",
    )
    inject.add_argument("inject_pid", type=parse_pid, metavar="PID")
    inject.add_argument("--timeout", type=seconds, default=10.0, help="give up after S seconds (default 10)")
    inject.add_argument("--socket-dir", metavar="DIR", help="where the agent's socket goes")

    from perftop.commands.export import add_export_parser
    from perftop.commands.record import add_record_parser
    from perftop.commands.replay import add_replay_parser
    from perftop.commands.web import add_web_parser

    add_export_parser(sub)
    add_record_parser(sub)
    add_replay_parser(sub)
    add_web_parser(sub)
    return parser


def _action_params(args: argparse.Namespace) -> dict[str, object]:
    """The request parameters of `perftop action`, from its options."""
    if args.action == "explain":
        if not args.fingerprint:
            raise UsageError("explain needs --fingerprint FP (see the queries in 'perftop snapshot --json')")
        if args.analyze and not args.yes:
            if sys.stdin is None or sys.stdin.closed or not sys.stdin.isatty():
                raise UsageError("EXPLAIN ANALYZE runs the statement: add --yes to confirm")
            sys.stderr.write("EXPLAIN ANALYZE runs the statement (SELECT only, rolled back). Go on? [y/N] ")
            if sys.stdin.readline().strip().lower() not in ("y", "yes"):
                raise Failure("cancelled")
        return {"fingerprint": args.fingerprint, "analyze": args.analyze, "confirm": args.analyze}
    options = {
        "seconds": args.seconds,
        "hz": args.hz,
        "threads": args.threads,
        "include_idle": args.include_idle or None,
        "frames": args.frames,
        "max_blocks": args.max_blocks,
        "keep_s": args.keep,
        "top": args.top,
        "stop": args.stop or None,
        "generation": args.generation,
        "count_objects": args.count_objects or None,
    }
    return {"name": args.action, **{k: v for k, v in options.items() if v is not None}}


def _run_action(args: argparse.Namespace) -> int:
    from perftop.collectors.agent_client import AgentError, RequestFailed
    from perftop.collectors.agent_view import call_agent
    from perftop.collectors.errors import CollectorError
    from perftop.collectors.process import check_pid
    from perftop.render.actions import render
    from perftop.render.units import safe_json

    try:
        check_pid(args.act_pid)
    except CollectorError as exc:
        raise UsageError(str(exc)) from None
    targets = _action_targets(args)
    params = _action_params(args)
    method = "explain" if args.action == "explain" else "action"
    timeout = (args.seconds or 5.0) + 60.0
    if targets != [args.act_pid]:
        return _fan_out_action(args, targets, method, params, timeout)
    try:
        if args.action == "profile":
            from perftop.collectors.pyspy import PySpyError, run_profile

            def agent(p: dict[str, object]) -> object:
                return call_agent(args.act_pid, method, p, args.socket_dir, timeout)

            try:
                result = run_profile(args.act_pid, params, args.sampler, agent)
            except PySpyError as exc:
                raise Failure(str(exc)) from None
        else:
            result = call_agent(args.act_pid, method, params, args.socket_dir, timeout)
    except RequestFailed as exc:
        raise Failure(f"{args.action} failed in PID {args.act_pid}: {exc}") from None
    except AgentError as exc:
        raise UsageError(
            f"{exc}; start one with perftop.start() in the app, 'perftop run', or 'perftop inject PID'"
        ) from None
    if args.output and args.action == "profile":
        _save_profile(result, args.output)
    if args.json:
        sys.stdout.write(safe_json(result) + "\n")
    else:
        sys.stdout.write(render(args.action, result) + "\n")
    return EXIT_OK


def _action_targets(args: argparse.Namespace) -> list[int]:
    """Where `perftop action` runs: PID itself, or (from a parent) its workers that run an agent."""
    from perftop.collectors.discovery import find_child_agents

    pid = args.act_pid
    if args.no_children:
        if args.worker:
            raise UsageError("--worker and --no-children exclude each other")
        return [pid]
    workers = sorted(find_child_agents(pid, args.socket_dir))
    if args.worker:
        for worker in args.worker:
            if worker not in workers:
                known = ", ".join(map(str, workers)) or "none"
                raise UsageError(f"PID {worker} is not a worker of PID {pid} with an agent (those: {known})")
        return list(dict.fromkeys(args.worker))
    if args.output and args.output.endswith(".json") and len(workers) > 1:
        raise UsageError("a speedscope file holds one process: add --worker PID, or save to a .folded file")
    return workers or [pid]


def _fan_out_action(
    args: argparse.Namespace, targets: list[int], method: str, params: dict[str, object], timeout: float
) -> int:
    """Run the action in every target at once; print the merged result and each worker's (`per_pid`).
    EXPLAIN runs once, in a process whose agent recorded the fingerprint."""
    from perftop.collectors.agent_view import call_agent
    from perftop.collectors.workers import fan_out, merge_action, worker_figures
    from perftop.render.actions import render

    def call(pid: int) -> object:
        if args.action == "profile":
            from perftop.collectors.pyspy import run_profile

            def agent(p: dict[str, object]) -> object:
                return call_agent(pid, method, p, args.socket_dir, timeout)

            return run_profile(pid, params, args.sampler, agent)
        return call_agent(pid, method, params, args.socket_dir, timeout)

    if args.action == "explain":
        candidates = [args.act_pid, *targets] if not args.worker else targets
        stats, _ = fan_out(
            candidates, lambda p: call_agent(p, "stats", {"window": None}, args.socket_dir, 10.0)
        )
        ran = [
            p for p in candidates if p in stats and args.fingerprint in worker_figures(stats[p]).fingerprints
        ]
        if not ran:
            asked = ", ".join(str(p) for p in candidates if p in stats)
            raise UsageError(
                f"no process of PID {args.act_pid} recorded an execution of fingerprint {args.fingerprint!r}"
                f" (agents asked: {asked or 'none answered'})"
            )
        targets = ran[:1]
    results, errors = fan_out(targets, call)
    if not results:
        why = "; ".join(f"PID {pid}: {errors[pid]}" for pid in sorted(errors))
        raise Failure(f"{args.action} failed in every worker of PID {args.act_pid}: {why}")
    for pid, message in errors.items():
        sys.stderr.write(f"perftop: {args.action} failed in PID {pid}: {message}\n")
    merged = merge_action(args.action, results)
    if args.output and args.action == "profile":
        _save_profile(merged, args.output)
    if args.json:
        from perftop.render.units import safe_json

        doc = {"threads": merged} if isinstance(merged, list) else dict(merged)
        doc["per_pid"] = {str(pid): results[pid] for pid in sorted(results)}
        if errors:
            doc["errors"] = {str(pid): errors[pid] for pid in sorted(errors)}
        sys.stdout.write(safe_json(doc) + "\n")
        return EXIT_OK
    pids = sorted(results)
    if args.action == "profile":
        counts = ", ".join(
            f"{pid}: {results[pid].get('samples', 0)} ({results[pid].get('idle_samples', 0)} idle)"
            for pid in pids
        )
        text = f"{render(args.action, merged)}\n\nsamples per worker: {counts}"
    elif args.action == "explain":
        text = f"ran in PID {pids[0]}, whose agent recorded this fingerprint\n{render(args.action, merged)}"
    else:
        text = "\n\n".join(f"== PID {pid} ==\n{render(args.action, results[pid])}" for pid in pids)
    sys.stdout.write(text + "\n")
    return EXIT_OK


def _save_profile(result: dict[str, object], path: str) -> None:
    """Folded stacks for flamegraph.pl, or a speedscope document for .json paths."""
    import json

    text = json.dumps(result.get("speedscope")) if path.endswith(".json") else str(result.get("folded", ""))
    try:
        with open(path, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        raise Failure(f"cannot write {path}: {exc.strerror}") from None
    sys.stderr.write(f"perftop: profile saved to {_safe_line(path)}\n")


def _command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command implemented in another module, imported only when it runs."""
    import importlib

    run: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), name)
    return run


def _run_inject(args: argparse.Namespace) -> int:
    from perftop.launch.inject import InjectError, inject

    try:
        path = inject(args.inject_pid, args.socket_dir, timeout=args.timeout)
    except InjectError as exc:
        raise (UsageError if exc.bad_input else Failure)(str(exc)) from None
    sys.stdout.write(f"agent started in PID {args.inject_pid}: {path}\n")
    return EXIT_OK


def _fast_run(argv: list[str]) -> int:
    """`perftop run` without building the whole parser: its start-up cost is added to the program's."""
    name: str | None = None
    slow_ms: float | None = None
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        option, _, value = argv[i].partition("=")
        if option == "--no-frameworks" and not value:
            os.environ["PERFTOP_FRAMEWORKS"] = "0"
            i += 1
            continue
        if option not in ("--name", "--slow-ms"):
            raise UsageError(f"unrecognized arguments: {argv[i]} (see 'perftop run --help')")
        if not value:
            i += 1
            if i >= len(argv):
                raise UsageError(f"argument {option}: expected one argument")
            value = argv[i]
        if option == "--name":
            name = value
        else:
            try:
                slow_ms = float(value)
            except ValueError:
                raise UsageError(f"argument --slow-ms: invalid float value: {value!r}") from None
        i += 1
    return _exec_program(argv[i:], name, slow_ms)


def _run_program(args: argparse.Namespace) -> int:
    if args.no_frameworks:
        os.environ["PERFTOP_FRAMEWORKS"] = "0"
    return _exec_program(args.cmd, args.name, args.slow_ms)


def _exec_program(cmd: list[str], name: str | None, slow_ms: float | None) -> int:
    from perftop.launch.runner import exec_with_agent

    try:
        exec_with_agent(cmd, name, slow_ms)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot run {cmd[-1] if cmd else ''}: {exc.strerror}") from None
    return EXIT_FAILURE  # exec does not return


def _run_demo(args: argparse.Namespace) -> int:
    import tempfile

    from perftop.launch.runner import demo_command, exec_with_agent, start_demo, stop_process, wait_for_agent

    if args.no_tui:
        sys.stdout.write(f"{os.getpid()}\n")
        sys.stdout.flush()
        exec_with_agent(demo_command(args.threads, args.url), "perftop-demo", 25.0)
        return EXIT_FAILURE  # exec does not return
    log_path = _demo_log(os.path.join(tempfile.gettempdir(), f"perftop-demo-{os.getuid()}"))
    proc = start_demo(args.threads, log_path, args.url)
    try:
        if not wait_for_agent(proc.pid, args.socket_dir):
            raise Failure(f"the demo service did not start; see {log_path}")
        return _run_tui(proc.pid, args)
    finally:
        stop_process(proc)


def _demo_log(directory: str) -> str:
    """The demo service's log file, `demo.log` in `directory`: a directory of ours, mode 0700 (so nobody
    else can plant a symlink in it), and a regular file of ours opened without following a symlink."""
    from perftop.wire.paths import ensure_private_dir

    path = os.path.join(directory, "demo.log")
    try:
        ensure_private_dir(directory)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UsageError(f"cannot use {path} for the demo's log: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        raise UsageError(f"cannot use {path} for the demo's log: not a regular file of this user")
    return path


def _run_tui(pid: int | None, args: argparse.Namespace) -> int:
    from perftop.collectors.errors import CollectorError
    from perftop.collectors.process import check_pid
    from perftop.tui.themes import ThemeError, resolve_theme

    if pid is not None:
        try:
            check_pid(pid)
        except CollectorError as exc:
            raise UsageError(str(exc)) from None
    try:
        theme, themes = resolve_theme(args.theme)
    except ThemeError as exc:
        raise UsageError(str(exc)) from None
    from perftop.tui.app import PerftopApp
    from perftop.tui.sources import LiveSources

    app = PerftopApp(
        sources=LiveSources(socket_dir=args.socket_dir),
        pid=pid,
        interval=args.interval,
        theme_name=theme.name,
        themes=themes,
        read_only=getattr(args, "read_only", False),
    )
    app.run()
    return app.return_code or EXIT_OK


def _run_snapshot(args: argparse.Namespace) -> int:
    from perftop.collectors.errors import CollectorError
    from perftop.export.snapshot import take_snapshot
    from perftop.render.snapshot import snapshot_json, snapshot_text
    from perftop.render.units import safe_json, safe_text

    try:
        snap = take_snapshot(
            args.snap_pid, args.interval, args.window, args.socket_dir, children=not args.no_children
        )
    except CollectorError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        sys.stdout.write(safe_json(snapshot_json(snap)) + "\n")
    else:
        sys.stdout.write(safe_text(snapshot_text(snap)) + "\n")
    return EXIT_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "attach": lambda a: _run_tui(a.attach_pid, a),
    "snapshot": _run_snapshot,
    "action": _run_action,
    "inject": lambda a: _run_inject(a),
    "export": lambda a: _command("perftop.commands.export", "run_export")(a),
    "record": lambda a: _command("perftop.commands.record", "run_record")(a),
    "replay": lambda a: _command("perftop.commands.replay", "run_replay")(a),
    "web": lambda a: _command("perftop.commands.web", "run_web")(a),
    "run": _run_program,
    "demo": _run_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `perftop` script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["run"] and not {"-h", "--help"} & set(
            argv[1 : argv.index("--") if "--" in argv else None]
        ):
            return _fast_run(argv[1:])
        args = build_parser().parse_args(argv)
        if args.command is None:
            return _run_tui(args.pid, args)
        return _COMMANDS[args.command](args)
    except UsageError as exc:
        return fail(str(exc), EXIT_USAGE)
    except Failure as exc:
        return fail(str(exc), EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


def _safe_line(text: str) -> str:
    """`text` as one line with no control character (paths and errors can hold app-chosen bytes)."""
    from perftop.render.units import safe_text

    return safe_text(text, newlines=False)
