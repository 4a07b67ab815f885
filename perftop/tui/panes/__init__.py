"""One module per pane; each pane owns its bindings. The few layout figures the panes share are here."""

CELL_PAD = 2
"""DataTable's padding around every cell (one column each side)."""
FRAME = 4
"""A pane's border and its table's vertical scrollbar."""
