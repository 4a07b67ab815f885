"""The CLI's commands: one module per command, composed by `perftop.cli`; `_args` holds what they share.

Nothing outside `perftop.cli` and this package imports them (tests/test_layers.py checks it).
"""
