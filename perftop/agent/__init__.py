"""The in-app agent: runs inside the monitored process. Standard library only; never raises into the app.

`start()` serves this process's metrics on a Unix socket; `stop()` stops serving. The server module is
imported on first use, so `import perftop` stays light.
"""

from __future__ import annotations

__all__ = ["socket_file", "start", "stop"]


def start(name: str | None = None, socket_dir: str | None = None, max_metrics: int | None = None) -> None:
    """Start the agent (idempotent): gc pause recording, the agent thread and the socket. Never raises."""
    from perftop.agent.pump import pump

    with pump.starting():  # an app thread's first metric waits for this (`Pump.wait_started`)
        from perftop.agent import server

        server.start(name, socket_dir, max_metrics)


def stop() -> None:
    """Stop serving: close the socket and the viewers' connections, remove the socket file."""
    from perftop.agent import server

    server.stop()


def socket_file() -> str | None:
    """The path of the socket this process serves, or None when it serves none."""
    from perftop.agent import server

    return server.socket_file()
