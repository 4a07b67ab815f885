"""An icicle flame graph of a profile's call tree, navigable with the keyboard.

Each row is one stack depth, root at the top; a frame's width is its share of the samples of the node
being viewed. Arrow keys move the cursor (up: caller, down: hottest callee, left/right: siblings), Enter
zooms into the frame under the cursor, Backspace zooms out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.reactive import reactive
from textual.widget import Widget


@dataclass
class Frame:
    """A node of the call tree."""

    name: str
    file: str
    line: int
    total: int
    self_samples: int
    children: list[Frame] = field(default_factory=list)
    parent: Frame | None = None

    @classmethod
    def from_tree(cls, data: dict[str, Any], parent: Frame | None = None) -> Frame:
        node = cls(
            name=str(data.get("name", "?")),
            file=str(data.get("file", "")),
            line=int(data.get("line") or 0),
            total=int(data.get("total") or 0),
            self_samples=int(data.get("self") or 0),
            parent=parent,
        )
        node.children = sorted(
            (cls.from_tree(c, node) for c in data.get("children") or []), key=lambda c: -c.total
        )
        return node

    def path(self) -> list[Frame]:
        out: list[Frame] = []
        node: Frame | None = self
        while node is not None:
            out.append(node)
            node = node.parent
        return out[::-1]


def layout(root: Frame, width: int, depth: int) -> list[list[tuple[int, int, Frame]]]:
    """For each depth row, the (start column, width, frame) spans of frames at least one column wide."""
    rows: list[list[tuple[int, int, Frame]]] = [[] for _ in range(depth)]

    def place(node: Frame, start: int, span: int, level: int) -> None:
        if level >= depth or span < 1:
            return
        rows[level].append((start, span, node))
        pos = float(start)
        for child in node.children:
            w = span * child.total / node.total if node.total else 0.0
            cstart, cend = round(pos), round(pos + w)
            place(child, cstart, cend - cstart, level + 1)
            pos += w

    place(root, 0, width, 0)
    return rows


class FlameView(Widget, can_focus=True):
    """The icicle view; `cursor` is the selected frame, `root` the frame zoomed into."""

    COMPONENT_CLASSES = {"flame--a", "flame--b", "flame--cursor", "flame--path"}

    DEFAULT_CSS = """
    FlameView { height: 1fr; min-height: 4; }
    FlameView > .flame--a { background: $primary-darken-2; color: $text; }
    FlameView > .flame--b { background: $secondary-darken-2; color: $text; }
    FlameView > .flame--path { background: $accent-darken-2; color: $text; }
    FlameView > .flame--cursor { background: $accent; color: $background; text-style: bold; }
    """

    BINDINGS = [
        Binding("up", "move('up')", "Caller", show=False),
        Binding("down", "move('down')", "Callee", show=False),
        Binding("left", "move('left')", "Prev", show=False),
        Binding("right", "move('right')", "Next", show=False),
        Binding("enter", "zoom", "Zoom"),
        Binding("backspace", "unzoom", "Zoom out"),
    ]

    cursor: reactive[Frame | None] = reactive(None, always_update=True)
    """The selected frame."""
    root: reactive[Frame | None] = reactive(None, always_update=True)
    """The frame whose subtree fills the width."""

    def load(self, tree: dict[str, Any] | None) -> None:
        """Show a new profile's tree (the `tree` of a profile result)."""
        top = Frame.from_tree(tree) if tree else None
        self.root = top
        self.cursor = top.children[0] if top is not None and top.children else top

    def render(self) -> Text:
        root = self.root
        width = max(self.size.width, 1)
        height = max(self.size.height, 1)
        if root is None or root.total == 0:
            return Text("no samples")
        on_path = set(map(id, self.cursor.path())) if self.cursor is not None else set()
        styles = [self.get_component_rich_style(c) for c in ("flame--a", "flame--b")]
        path_style = self.get_component_rich_style("flame--path")
        cursor_style = self.get_component_rich_style("flame--cursor")
        out = Text(no_wrap=True, overflow="crop")
        rows = layout(root, width, height - 1)
        for level, spans in enumerate(rows):
            line = Text(" " * width, no_wrap=True)
            for n, (start, span, frame) in enumerate(spans):
                label = f"{frame.name} ({100 * frame.total / root.total:.0f}%)"
                style: Style = styles[(n + level) % 2]
                if frame is self.cursor:
                    style = cursor_style
                elif id(frame) in on_path:
                    style = path_style
                cell = (label[: span - 1] + "▏") if span > 1 else "▏"
                line = line[:start] + Text(cell.ljust(span)[:span], style=style) + line[start + span :]
            out.append_text(line)
            out.append("\n")
        out.append_text(Text(self._status(root)[:width], style="bold"))
        return out

    def _status(self, root: Frame) -> str:
        cur = self.cursor
        if cur is None:
            return ""
        share = 100 * cur.total / root.total if root.total else 0
        return (
            f"{cur.name}  {cur.file}:{cur.line}  total {cur.total} ({share:.1f}% of view)"
            f"  self {cur.self_samples}"
            "   ←→↑↓ move · Enter zoom · Backspace out"
        )

    def action_move(self, direction: str) -> None:
        cur = self.cursor
        if cur is None:
            return
        if direction == "up" and cur.parent is not None and cur is not self.root:
            self.cursor = cur.parent
        elif direction == "down" and cur.children:
            self.cursor = cur.children[0]
        elif direction in ("left", "right") and cur.parent is not None:
            siblings = cur.parent.children
            i = siblings.index(cur) + (1 if direction == "right" else -1)
            if 0 <= i < len(siblings):
                self.cursor = siblings[i]

    def action_zoom(self) -> None:
        if self.cursor is not None:
            self.root = self.cursor

    def action_unzoom(self) -> None:
        if self.root is not None and self.root.parent is not None:
            self.root = self.root.parent
