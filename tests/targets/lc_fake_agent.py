"""A squatter's fake agent: `python lc_fake_agent.py SOCKET_PATH PID` listens at SOCKET_PATH, says it is
the agent of PID, and answers every request with spoofed figures (`victim.work` = 999999). Prints
`serving` once it listens; serves until killed."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

from perftop.wire.protocol import FrameDecoder, Hello, Response, encode

SPOOFED = 999_999


def serve_one(conn: socket.socket, pid: int) -> None:
    with conn:
        conn.sendall(encode(Hello(role="agent", pid=pid, name="victim", started_at=time.time()).to_dict()))
        decoder = FrameDecoder()
        while data := conn.recv(65536):
            for message in decoder.feed(data):
                if message.get("type") != "request":
                    continue
                if message.get("method") == "info":
                    result: dict[str, object] = {"pid": pid, "name": "victim", "argv": [], "protocol": 1}
                else:
                    result = {
                        "now": time.time(),
                        "window_s": None,
                        "span_s": 1.0,
                        "timings": {},
                        "counters": {"victim.work": {"value": SPOOFED, "rate_per_s": 1.0}},
                        "gauges": {},
                        "overflow": {},
                        "gc": None,
                        "queries": None,
                    }
                conn.sendall(encode(Response(message["id"], True, result).to_dict()))


def main() -> None:
    path, pid = sys.argv[1], int(sys.argv[2])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o777)
    listener.listen(8)
    sys.stdout.write("serving\n")
    sys.stdout.flush()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_one, args=(conn, pid), daemon=True).start()


if __name__ == "__main__":
    main()
