"""Test target: tries to monitor a PID with perftop's collectors and reports the outcome as JSON on stdout.

Run as another user to check what perftop says when it may not read a process.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from perftop.collectors.errors import CollectorError
from perftop.collectors.process import ProcessCollector, check_pid


def main() -> None:
    pid = int(sys.argv[1])
    result: dict[str, object]
    try:
        check_pid(pid)
        sample = ProcessCollector(pid).sample()
        nofile = sample.limit("nofile")
        result = {
            "ok": True,
            "uid": os.getuid(),
            "num_fds": sample.num_fds,
            "nofile_soft": None if nofile is None else nofile.soft,
            "limits": len(sample.limits),
        }
    except CollectorError as exc:
        result = {"ok": False, "uid": os.getuid(), "error": type(exc).__name__, "message": str(exc)}
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
