"""The ``tritune`` console command: one entry point, one subcommand per job.

Options come from the command line, ``TRITUNE_*`` environment variables, a config file and
``[tool.tritune]`` in pyproject.toml; see :mod:`tritune.settings` for the precedence.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tritune import __version__, settings
from tritune.errors import TrituneError

# name: (help, module with add_arguments(parser) and run(args)).
_COMMANDS: dict[str, tuple[str, str]] = {
    "build": (
        "train, prune, distil, quantize and export the CNN variants into a Triton model repository",
        "builders.cli",
    ),
    "data": (
        "write Fashion-MNIST or the digits as an .npz that fits a model's image input (--eval-data, --train-data)",
        "builders.data_cli",
    ),
    "demo": (
        "the main job in one command: build if needed, serve, sweep, orchestrate under a Locust step load, report",
        "console.demo",
    ),
    "loadtest": (
        "drive a running Triton with Locust (HTTP/gRPC users, load shapes) into a run folder with a report",
        "loadtest.cli",
    ),
    "measure": (
        "measure a repository's own variant models on your data into a manifest and a public model: the ladder on",
        "builders.measure",
    ),
    "orchestrate": ("retune batching, instances and the served variant live against a p99 SLO", "orchestrator.cli"),
    "sweep": (
        "offline search of instances × queue delays × batch sizes × variants × concurrency against a p99 SLO",
        "loadtest.sweep_cli",
    ),
    "serve": (
        "run a local Triton on the model repository (127.0.0.1, admin API restricted by a key)",
        "console.serve",
    ),
}


def build_parser(
    only: str | None = None,
) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser; with ``only``, just that subcommand's module is imported for its options (the others list their
    help line), so `tritune serve` does not import torch. Without, every subcommand's options are added."""
    parser = argparse.ArgumentParser(
        prog="tritune",
        description="Optimized CNN variants on Triton, tuned live against a latency SLO.",
        epilog="Every option is also read from TRITUNE_<OPTION>, a config file (--config, TRITUNE_CONFIG or "
        "./tritune.toml) and [tool.tritune] in ./pyproject.toml; the command line wins, then the "
        "environment, then the config file, then pyproject.toml.",
    )
    parser.add_argument("--version", action="version", version=f"tritune {__version__}")
    parser.add_argument(
        "--config", metavar="FILE", help="TOML config file (default: $TRITUNE_CONFIG or ./tritune.toml)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subparsers = {}
    for name, (help_text, module) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
        subparsers[name] = p
    return parser, subparsers


def _command_name(argv: Sequence[str]) -> str | None:
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == "--config":
            skip = True
            continue
        if not token.startswith("-"):
            return token
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = _command_name(argv)
    parser, subparsers = build_parser(name if name in _COMMANDS else "")
    try:
        if name in subparsers:
            pre_config = [argv[i + 1] for i, t in enumerate(argv[:-1]) if t == "--config"]
            pre_config += [t.split("=", 1)[1] for t in argv if t.startswith("--config=")]
            subparsers[name].set_defaults(
                **settings.layered_defaults(name, subparsers[name], pre_config[-1] if pre_config else None)
            )
        args = parser.parse_args(argv)
        return int(importlib.import_module(args._module).run(args) or 0)
    except TrituneError as exc:
        print(f"tritune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tritune: interrupted", file=sys.stderr)
        return 130
