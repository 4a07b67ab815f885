"""Run with `python -m tests.targets.run_dash_m` under `perftop run`: imports perftop's API right away, as
`python -m perftop.launch.demo_service` does, while the agent's start-up thread is importing too."""

import perftop


@perftop.time_it("dash_m.work")
def work() -> None:
    return None


work()
