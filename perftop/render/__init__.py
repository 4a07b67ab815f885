"""Text renderings without Textual: plans, SQL, units, action results (shared by the CLI and the TUI)."""
