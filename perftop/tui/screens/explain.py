"""EXPLAIN's result for a query fingerprint: the plan the database returned, as a tree or raw, and the
advice read from it."""

from __future__ import annotations

import json
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from perftop.render.plan import NO_ADVICE, NO_ADVICE_BUT_WARNINGS, plan_lines


class ExplainView(ModalScreen[None]):
    """The plan the database returned for a fingerprint, and the advice read from it."""

    DEFAULT_CSS = """
    ExplainView { align: center middle; }
    ExplainView > Vertical {
        width: 95%; height: 90%; border: thick $accent; background: $surface; padding: 0 1;
    }
    ExplainView .title { color: $accent; text-style: bold; }
    ExplainView .section { color: $secondary; text-style: bold; margin-top: 1; }
    ExplainView .advice { color: $warning; }
    ExplainView #plan { height: 1fr; overflow-y: auto; }
    """

    BINDINGS = [Binding("escape,q", "close", "Close"), Binding("r", "raw", "Raw plan")]

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__()
        self.result = result
        self.raw = False

    def compose(self) -> ComposeResult:
        r = self.result
        advice = r.get("advice") or []
        with Vertical():
            analyzed = " (ANALYZE: executed and rolled back)" if r.get("analyzed") else ""
            yield Label(f"EXPLAIN on {r.get('dialect')}{analyzed}", classes="title")
            yield Label(str(r.get("statement") or r.get("fingerprint")), markup=False)
            yield Label(f"advice ({len(advice)})", classes="section")
            if not advice:
                warned = any(line.warn for line in plan_lines(str(r.get("dialect")), r.get("plan")))
                yield Label(NO_ADVICE_BUT_WARNINGS if warned else NO_ADVICE)
            for item in advice:
                yield Label(
                    f"• {item.get('message')}",
                    classes="advice",
                    id=f"advice-{advice.index(item)}",
                    markup=False,
                )
                if item.get("sql"):
                    yield Label(f"    {item['sql']}", markup=False)
            yield Label("plan (r: raw)", classes="section", id="plan-title")
            yield Static(plan_content(str(r.get("dialect")), r.get("plan")), id="plan")

    def action_raw(self) -> None:
        """`r`: the plan as the database returned it, or back to the tree."""
        self.raw = not self.raw
        plan = self.query_one("#plan", Static)
        if self.raw:
            raw = self.result.get("plan")
            plan.update(Content(raw if isinstance(raw, str) else json.dumps(raw, indent=2)))
        else:
            plan.update(plan_content(str(self.result.get("dialect")), self.result.get("plan")))
        self.query_one("#plan-title", Label).update("plan, raw (r: tree)" if self.raw else "plan (r: raw)")

    def action_close(self) -> None:
        self.dismiss(None)


def plan_content(dialect: str, plan: Any) -> Content:
    """The plan as an indented tree: the costly nodes in the theme's error colour with their share of the
    time, conditions and figures dimmed beneath, warnings in the warning colour. App text stays plain."""
    parts: list[Content] = []
    for line in plan_lines(dialect, plan):
        indent = "  " * line.depth + ("-> " if line.depth else "")
        share = f"  {line.share:.0%}" if line.share is not None and line.share >= 0.05 else ""
        style = "bold $error" if line.hot else "bold"
        parts.append(
            Content.from_markup(
                f"$indent[{style}]$text[/][$accent]$share[/]", indent=indent, text=line.text, share=share
            )
        )
        pad = "  " * line.depth + "     "
        parts.extend(Content.from_markup("$pad[$text-muted]$d[/]", pad=pad, d=d) for d in line.details)
        parts.extend(Content.from_markup("$pad[$warning]! $w[/]", pad=pad, w=w) for w in line.warn)
    return Content("\n").join(parts)
