"""Preloaded by the forkserver in `lc_fork_target.py`: the forkserver starts the agent, then forks the
workers (as under `perftop run`, where every Python starts one)."""

import perftop

perftop.start(name="forkserver")
