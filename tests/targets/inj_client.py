"""Runs perftop.launch.inject.inject(PID, SOCKET_DIR) and writes `ok PATH` or `error MESSAGE` on one line (for
injecting as another user)."""

import sys

from perftop.launch.inject import InjectError, inject


def main() -> None:
    try:
        sys.stdout.write(f"ok {inject(int(sys.argv[1]), sys.argv[2] or None, timeout=20)}\n")
    except InjectError as exc:
        sys.stdout.write(f"error {exc}\n")


if __name__ == "__main__":
    main()
