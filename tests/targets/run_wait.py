"""Prints `ready`, then sleeps until killed (for the signal tests of `perftop run`)."""

import sys
import time

sys.stdout.write("ready\n")
sys.stdout.flush()
while True:
    time.sleep(60)
