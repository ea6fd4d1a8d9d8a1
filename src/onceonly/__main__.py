"""``python -m onceonly``: the ``onceonly`` command, for when the script is not on PATH."""

from __future__ import annotations

import sys

from .cli import main

# The guard matters: the demo's worker processes are spawned, and spawn imports
# the parent's main module again (as ``__mp_main__``), which must not rerun the CLI.
if __name__ == "__main__":
    sys.exit(main())
