"""A terminal driver whose input thread sleeps while nothing is typed.

Textual's Linux driver reads the terminal in a thread that wakes ten times a second whether or not a key
came, so that a lone Escape is told from the start of an escape sequence after ESCDELAY. In a monitor left
open for hours those wake-ups were a sixth of perftop's idle CPU. This driver polls the same way only while
input is recent (until its escape timeout has passed), and otherwise waits in `select` until a key comes or
the driver stops: stopping wakes the thread through a pipe.

Where Textual's driver is not the one this was written against (a different class, or its input loop's
parts renamed), Textual's own driver is used unchanged.
"""

from __future__ import annotations

import os
import selectors
import time
from codecs import getincrementaldecoder
from contextlib import suppress
from typing import Any

from textual import constants
from textual.driver import Driver

POLL_S = 0.1
"""How often the thread wakes while input is recent: Textual's own interval."""
QUIET_AFTER_S = constants.ESCAPE_DELAY + 2 * POLL_S
"""Time after the last input when the thread stops polling: every timeout of the parser has passed."""


def quiet_driver(driver: type[Driver]) -> type[Driver]:
    """The quiet subclass of Textual's Linux driver, or `driver` itself where it is another driver or its
    input loop is not the one this module replaces."""
    try:
        from textual._parser import ParseError
        from textual._xterm_parser import XTermParser
        from textual.drivers.linux_driver import LinuxDriver
    except ImportError:
        return driver
    if driver is not LinuxDriver or not all(
        hasattr(LinuxDriver, name) for name in ("run_input_thread", "disable_input", "process_message")
    ):
        return driver

    class QuietLinuxDriver(LinuxDriver):
        """Textual's Linux driver with an input thread that waits for input instead of polling."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._wake_r, self._wake_w = os.pipe()

        def disable_input(self) -> None:
            """Wake the input thread, which then polls until it sees the exit event Textual sets."""
            if self._wake_w >= 0:
                with suppress(OSError):
                    os.write(self._wake_w, b"x")
            super().disable_input()

        def close(self) -> None:
            super().close()
            for fd in (self._wake_r, self._wake_w):
                with suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1  # never written to once closed: the number may be reused

        def run_input_thread(self) -> None:
            """Textual's input loop, with `select` timing out only while input is recent."""
            selector = selectors.SelectSelector()
            selector.register(self.fileno, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            parser = XTermParser(self._debug)
            decode = getincrementaldecoder("utf-8")().decode
            last_input = time.monotonic()

            def process(events: list[tuple[selectors.SelectorKey, int]], final: bool = False) -> None:
                """Feed what was read to the parser, then let it time out a lone Escape."""
                nonlocal last_input
                for key, mask in events:
                    if not mask & selectors.EVENT_READ:
                        continue
                    if key.fd == self._wake_r:
                        os.read(self._wake_r, 64)
                        last_input = time.monotonic()  # poll until the exit event is seen
                        continue
                    data = decode(os.read(self.fileno, 1024 * 4), final=final)
                    if not data:
                        break  # stdin piped and at its end
                    last_input = time.monotonic()
                    for event in parser.feed(data):
                        self.process_message(event)
                for event in parser.tick():
                    self.process_message(event)

            try:
                while not self.exit_event.is_set():
                    recent = time.monotonic() - last_input < QUIET_AFTER_S
                    process(selector.select(POLL_S if recent else None))
                selector.unregister(self.fileno)
                process(selector.select(POLL_S), final=True)
            finally:
                selector.close()
                with suppress(EOFError, ParseError):  # the parser's end, ignored as Textual does
                    for _event in parser.feed(""):
                        pass

    return QuietLinuxDriver
