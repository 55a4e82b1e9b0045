"""``python -m builders``: the build on its own (``tritune build`` adds the environment and config-file layers)."""

import argparse
import sys

from builders import cli

parser = argparse.ArgumentParser(prog="python -m builders", description="build the tritune model repository")
cli.add_arguments(parser)
raise SystemExit(cli.run(parser.parse_args(sys.argv[1:])) or 0)
