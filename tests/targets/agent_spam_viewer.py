"""A viewer that streams stats requests as fast as it can, for the tests that kill it mid-stream.

Usage: `python agent_spam_viewer.py SOCKET_PATH`. Writes `streaming` on stdout after the first answer,
then keeps a few requests in flight forever.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from perftop.collectors.agent_client import AgentClient


def main() -> None:
    with AgentClient(sys.argv[1]) as client:
        client.call("stats")
        sys.stdout.write("streaming\n")
        sys.stdout.flush()
        while True:
            client.call("stats")


if __name__ == "__main__":
    main()
