"""`perftop demo`: start the built-in demo service (instrumented, SQLite) and open the TUI attached to it."""

from __future__ import annotations

import os
import stat
import sys

from perftop.commands._args import EXIT_FAILURE, Failure, UsageError, add_tui_options, open_tui

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any


def add_demo_parser(sub: Any) -> None:
    """Register `perftop demo` on the CLI's subparsers."""
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
    add_tui_options(demo)


def run_demo(args: argparse.Namespace) -> int:
    """`perftop demo`: the TUI on the service until it quits, then the service stopped; with --no-tui,
    this process becomes the service (its PID printed first)."""
    import tempfile

    from perftop.launch.runner import demo_command, exec_with_agent, start_demo, stop_process, wait_for_agent

    if args.no_tui:
        sys.stdout.write(f"{os.getpid()}\n")
        sys.stdout.flush()
        exec_with_agent(demo_command(args.threads, args.url), "perftop-demo", 25.0)
        return EXIT_FAILURE  # exec does not return
    log_path = demo_log(os.path.join(tempfile.gettempdir(), f"perftop-demo-{os.getuid()}"))
    proc = start_demo(args.threads, log_path, args.url)
    try:
        if not wait_for_agent(proc.pid, args.socket_dir):
            raise Failure(f"the demo service did not start; see {log_path}")
        return open_tui(proc.pid, args)
    finally:
        stop_process(proc)


def demo_log(directory: str) -> str:
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
