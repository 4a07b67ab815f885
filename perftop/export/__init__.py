"""Headless forms of perftop's data: the JSON snapshot and the Prometheus exposition."""
