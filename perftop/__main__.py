"""`python -m perftop`."""

from perftop.cli import main

raise SystemExit(main())
