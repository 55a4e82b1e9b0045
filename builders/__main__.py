"""``python -m builders`` is ``tritune build``."""

import sys

from tritune.cli import main

raise SystemExit(main(["build", *sys.argv[1:]]))
