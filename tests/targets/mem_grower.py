"""A target whose live heap grows on command: `grow N` keeps N more small objects (one traced block
each), `tracing` answers tracemalloc.is_tracing() as the app itself sees it, `tick` answers its loop count
(the app keeps running while perftop works). It prints `ready` once its agent is up."""

import sys
import threading
import time
import tracemalloc

import perftop

perftop.start()
keep: list[list[int]] = []


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


ticks = 0


def spin() -> None:
    global ticks
    while True:
        time.sleep(0.01)
        ticks += 1


threading.Thread(target=spin, daemon=True).start()
say("ready")
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        break
    if cmd[0] == "grow":
        keep.extend([i] for i in range(int(cmd[1])))
        say("ok")
    elif cmd[0] == "tracing":
        say(str(tracemalloc.is_tracing()))
    elif cmd[0] == "tick":
        say(str(ticks))
