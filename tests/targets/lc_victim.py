"""A service that starts the agent with the default socket directory, counts `victim.work` 7 times, prints
`ready <pid> <socket>` and runs until its stdin closes. Started as a test user whose default directory a
squatter has taken."""

from __future__ import annotations

import os
import sys

import perftop
from perftop.agent import server

WORK = 7


def main() -> None:
    perftop.start(name="victim")
    for _ in range(WORK):
        perftop.count("victim.work", 1)
    sys.stdout.write(f"ready {os.getpid()} {server.socket_file()}\n")
    sys.stdout.flush()
    sys.stdin.read()


if __name__ == "__main__":
    main()
