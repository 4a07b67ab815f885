"""An instrumented app that mistreats its agent, for the lifecycle and security tests; line commands on stdin.

Run as `python lc_target.py SOCKET_DIR`. It starts the agent, prints `ready <pid> <socket>`, then answers
each command line with one line:

  work N             call `work` (a @time_it no-op) N times                           -> done N
  set NAME VALUE     set the agent server's constant NAME (a float) to VALUE           -> set
  agentfds           the agent's fds (sockets)                                         -> fds FD...
  close PORT K       close every fd >= 3 (as a daemonizing app does), then open K TCP connections to
                     127.0.0.1:PORT (reusing the old numbers) and send `app I\\n` on the I-th one
                                                                                     -> tcp FD...
  bye                send `bye I\\n` on the I-th TCP connection                         -> sent
  closewake          shut down the agent's wake-up pair's write end, as an app closing a stray fd may
                     (its read end then stays readable, at end of file)                 -> closed
  stall N            hold the recorder's drain lock (the agent thread is stuck behind it) while
                     recording N times through each hot path (`work` decorated, `block` timer,
                     `hits` counter, `lat` observe); report each pending buffer's length and
                     drops, then release              -> stalled work LEN DROPPED block LEN DROPPED ...
  exit               sys.exit(0) (the agent's atexit hook runs)                        -> (exits)
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import perftop
from perftop.agent import server
from perftop.agent.recorder import registry
from tests.targets.line_target import Command, run_work, serve, work


def agent_fds() -> list[int]:
    """The fds >= 3 open now: before `close`, the app opens none, so they are all the agent's."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the directory listing's own fd, closed by now
        if int(name) >= 3 and (target.startswith("socket:") or target.startswith("anon_inode:")):
            fds.append(int(name))
    return sorted(fds)


TCP: list[socket.socket] = []
"""The app's connections, global so that they are still open when atexit hooks run (as in the report)."""


def run_set(args: list[str]) -> str:
    setattr(server, args[0], float(args[1]))
    return "set"


def run_agentfds(args: list[str]) -> str:
    return "fds " + " ".join(map(str, agent_fds()))


def run_close(args: list[str]) -> str:
    port, k = int(args[0]), int(args[1])
    os.closerange(3, 4096)
    for i in range(k):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(f"app {i}\n".encode())
        TCP.append(conn)
    return "tcp " + " ".join(str(c.fileno()) for c in TCP)


def run_closewake(args: list[str]) -> str:
    waker = server.server._waker
    assert waker is not None
    waker[0].shutdown(socket.SHUT_WR)
    return "closed"


def run_bye(args: list[str]) -> str:
    for i, conn in enumerate(TCP):
        conn.sendall(f"bye {i}\n".encode())
    return "sent"


def run_stall(args: list[str]) -> str:
    n = int(args[0])
    out = []
    with registry.drain_lock:
        for i in range(n):
            work(i)
        for _ in range(n):
            with perftop.timer("block"):
                pass
        for _ in range(n):
            perftop.count("hits", 1)
        for _ in range(n):
            perftop.observe("lat", 1.5)
        metrics = [registry.timings["work"], registry.timings["block"]]
        metrics += [registry.counters["hits"], registry.timings["lat"]]
        for m in metrics:
            out.append(f"{m.name} {len(m.buf)} {m.dropped}")
    return "stalled " + " ".join(out)


def main() -> None:
    perftop.start(name="lc-target", socket_dir=sys.argv[1])
    commands: dict[str, Command] = {
        "work": run_work,
        "set": run_set,
        "agentfds": run_agentfds,
        "close": run_close,
        "bye": run_bye,
        "closewake": run_closewake,
        "stall": run_stall,
    }
    serve(commands)


if __name__ == "__main__":
    main()
