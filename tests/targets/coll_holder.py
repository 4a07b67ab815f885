"""Test target for the process collectors: holds open files and sockets until its stdin closes.

Writes one line, `ready`, to stdout once everything is open. `--busy` spins the CPU instead of idling.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
from typing import IO, Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=0, help="files to hold open")
    parser.add_argument("--sockets", action="store_true", help="hold a TCP listener and a connected pair")
    parser.add_argument("--busy", action="store_true", help="spin the CPU until stdin closes")
    parser.add_argument("--threads", type=int, default=0, help="extra idle threads to start")
    args = parser.parse_args()

    held: list[IO[Any] | socket.socket] = [open(os.devnull, "rb") for _ in range(args.files)]  # noqa: SIM115
    if args.sockets:
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        held += [listener, client, server]
    done = threading.Event()
    for _ in range(args.threads):
        threading.Thread(target=done.wait, daemon=True).start()
    if args.busy:

        def wait_for_eof() -> None:
            sys.stdin.read()
            done.set()

        threading.Thread(target=wait_for_eof, daemon=True).start()
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        while not done.is_set():
            pass
    else:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdin.read()
    done.set()
    for item in held:
        item.close()


if __name__ == "__main__":
    main()
