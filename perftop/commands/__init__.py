"""The CLI's commands, one module per command, composed by `perftop.cli`; `_args` holds what they share.

Each module registers its sub-parser (`add_<command>_parser(subparsers)`) and has the handler that runs
it (`run_...(args)`, returning the exit code); `perftop.cli` imports a module only when its command is
the chosen one. Nothing outside `perftop.cli` and this package imports them (tests/test_layers.py checks it).
"""
