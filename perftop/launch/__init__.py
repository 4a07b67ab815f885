"""Getting an agent into a process: `perftop run` (runner, _bootstrap), `perftop inject`, the demo service."""
