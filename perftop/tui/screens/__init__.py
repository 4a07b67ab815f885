"""Modal screens, one module per screen; panes push them."""
