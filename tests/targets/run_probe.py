"""Reports what `perftop run` left in this process, as one JSON line: whether perftop is loaded, the
chained sitecustomize's mark, and perftop's entry on sys.path (there must be none)."""

import json
import os
import sys

sys.stdout.write(
    json.dumps(
        {
            "perftop_loaded": "perftop" in sys.modules,
            "finders": [type(f).__name__ for f in sys.meta_path],
            "chained": os.environ.get("RUN_CHAINED_MARK"),
            "sys_path": sys.path,
        }
    )
    + "\n"
)
