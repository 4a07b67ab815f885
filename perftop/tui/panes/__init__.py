"""One module per pane; each pane owns its bindings."""
