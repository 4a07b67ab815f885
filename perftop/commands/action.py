"""`perftop action --pid PID ACTION`: run gc, memory, profile, profile_exact, threads or explain in PID's
agent (from a parent, in each of its workers with an agent, merged) and print the report or its JSON."""

from __future__ import annotations

import sys

from perftop.commands._args import (
    EXIT_OK,
    Failure,
    UsageError,
    check_target,
    hz,
    parse_pid,
    say,
    seconds,
    whole,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

ACTIONS = ("gc", "memory", "profile", "profile_exact", "threads", "explain")


def add_action_parser(sub: Any) -> None:
    """Register `perftop action` on the CLI's subparsers."""
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


def run_action(args: argparse.Namespace) -> int:
    """`perftop action`: a PID without an agent is exit 2, an action that fails in the agent exit 1."""
    from perftop.collectors.agent_client import AgentError, RequestFailed
    from perftop.collectors.agent_view import call_agent
    from perftop.render.actions import render
    from perftop.render.units import safe_json

    check_target(args.act_pid)
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
    say(f"profile saved to {path}")
