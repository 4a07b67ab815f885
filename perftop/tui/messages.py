"""Messages that carry collected data from the sampler thread to the widgets.

A tick's messages travel together in one `Sampled`, which may replace an earlier one still in the queue
(`can_replace`), so a slow terminal coalesces updates instead of queueing them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:  # annotations only: the process list never imports the agent's side
    from perftop.collectors.agent_view import AgentView
    from perftop.collectors.model import ProcessRow, ProcessSample, SystemSample
    from perftop.collectors.rows import ViewRows


class _Tick(Message):
    """A per-tick sample: a newer one supersedes an unprocessed older one."""

    def can_replace(self, message: Message) -> bool:
        return type(message) is type(self)


class SystemSampled(_Tick):
    """A new host sample."""

    def __init__(self, sample: SystemSample) -> None:
        super().__init__()
        self.sample = sample


class ProcessesListed(_Tick):
    """A new process list."""

    def __init__(self, rows: list[ProcessRow]) -> None:
        super().__init__()
        self.rows = rows


class ProcessSampled(_Tick):
    """A new sample of the attached process."""

    def __init__(self, sample: ProcessSample) -> None:
        super().__init__()
        self.sample = sample


class ProcessExited(Message):
    """The attached process is gone (or became unreadable)."""

    def __init__(self, pid: int, reason: str) -> None:
        super().__init__()
        self.pid = pid
        self.reason = reason


class AgentSampled(_Tick):
    """New data from the attached process's agent(s); `view` is None where there is no agent; `rows`: the
    panes' rows of it, built in the sampler's thread."""

    def __init__(
        self, pid: int, view: AgentView | None, error: str | None = None, rows: ViewRows | None = None
    ) -> None:
        super().__init__()
        self.pid = pid
        self.view = view
        self.error = error
        self.rows = rows


class Sampled(_Tick):
    """One tick of the sampler: its messages above, in order, handled together in one screen update. A
    newer tick replaces an unhandled older one that it holds a newer copy of each part of (the first
    host sample, sent alone, is not replaced by the rest of its own tick), and never one that says the
    attached process exited."""

    def __init__(self, parts: list[Message]) -> None:
        super().__init__()
        self.parts = parts

    def can_replace(self, message: Message) -> bool:
        if not isinstance(message, Sampled):
            return False
        older = {type(part) for part in message.parts}
        return ProcessExited not in older and older <= {type(part) for part in self.parts}


class AgentReply(Message):
    """The answer to one request made with `PerftopApp.agent_call`: a result, or an error message."""

    def __init__(
        self, pid: int, method: str, params: dict[str, Any], result: Any = None, error: str | None = None
    ) -> None:
        super().__init__()
        self.pid = pid
        self.method = method
        self.params = params
        self.result = result
        self.error = error
