"""A viewer run as another user (`nobody`) by the security tests. Standard library only, no perftop import.

Usage: `python3 agent_foreign_client.py SOCKET_PATH`. It connects, sends a viewer hello and a stats
request, reads until the agent closes, and writes one JSON line to stdout: {"connect": "ok" | "denied" |
"refused" | "error: ...", "frames": [every frame received]}.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys


def frame(message: dict[str, object]) -> bytes:
    payload = json.dumps(message).encode()
    return struct.pack("!I", len(payload)) + payload


def main() -> None:
    path = sys.argv[1]
    out: dict[str, object] = {"uid": os.getuid(), "frames": []}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(path)
        out["connect"] = "ok"
    except PermissionError:
        out["connect"] = "denied"
    except ConnectionRefusedError:
        out["connect"] = "refused"
    except OSError as exc:
        out["connect"] = f"error: {exc}"
    if out["connect"] == "ok":
        try:
            sock.sendall(frame({"type": "hello", "role": "viewer", "pid": os.getpid(), "protocol": 1}))
            sock.sendall(frame({"type": "request", "id": 1, "method": "stats", "params": {}}))
        except OSError:
            pass
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            pass
        frames = []
        while len(data) >= 4:
            (length,) = struct.unpack("!I", data[:4])
            frames.append(json.loads(data[4 : 4 + length]))
            data = data[4 + length :]
        out["frames"] = frames
    sock.close()
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
