"""Layered settings for the console command, in the manner of Locust's argument parser.

Every option of every subcommand can be given, from lowest to highest precedence:

1. the built-in default;
2. ``[tool.tritune]`` in ``./pyproject.toml``;
3. a config file: ``--config FILE`` or ``$TRITUNE_CONFIG``, else ``./tritune.toml`` if present;
4. an environment variable ``TRITUNE_<OPTION>`` (e.g. ``TRITUNE_EPOCHS=3``, ``TRITUNE_PRUNE_RATIO=0.4``);
5. the command line.

In either file, top-level keys apply to every subcommand and a table named after a subcommand (``[build]``, or
``[tool.tritune.build]`` in pyproject.toml) applies to that one. Keys are option names with ``-`` or ``_``.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from tritune.errors import ConfigError

T = TypeVar("T")
ENV_PREFIX = "TRITUNE_"
DEFAULT_CONFIG_FILE = "tritune.toml"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist; check the path given to --config or TRITUNE_CONFIG"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML ({exc}); fix it or remove it") from exc


def file_layers(config: str | None, cwd: Path | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The file sources in increasing precedence, each as (label, table)."""
    cwd = cwd or Path.cwd()
    layers: list[tuple[str, dict[str, Any]]] = []
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file():
        table = _read_toml(pyproject).get("tool", {}).get("tritune")
        if table:
            layers.append((f"{pyproject} [tool.tritune]", table))
    path = config or os.environ.get(ENV_PREFIX + "CONFIG")
    if path:
        layers.append((str(path), _read_toml(Path(path))))
    elif (cwd / DEFAULT_CONFIG_FILE).is_file():
        layers.append((str(cwd / DEFAULT_CONFIG_FILE), _read_toml(cwd / DEFAULT_CONFIG_FILE)))
    return layers


def _option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")}


def _convert(action: argparse.Action, value: Any, source: str) -> Any:
    flag = action.option_strings[-1]
    try:
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction | argparse.BooleanOptionalAction):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError(value)
        if isinstance(value, list) and action.type is not None and getattr(action.type, "accepts_list", False):
            return action.type(value)
        convertible = action.type in (int, float) and not isinstance(value, bool)
        if (action.type is not None and isinstance(value, str)) or convertible:
            value = action.type(value)
        if action.choices is not None and value not in action.choices:
            raise ValueError(value)
        return value
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        choices = f" (one of {', '.join(map(str, action.choices))})" if action.choices else ""
        raise ConfigError(f"{source}: {value!r} is not a valid value for {flag}{choices}; fix it there") from None


def layered_defaults(
    command: str,
    parser: argparse.ArgumentParser,
    config: str | None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """Defaults for ``parser`` (one subcommand) from files and the environment; the command line overrides them."""
    environ = os.environ if environ is None else environ
    actions = _option_actions(parser)
    values: dict[str, Any] = {}
    for label, table in file_layers(config, cwd):
        scoped = {k: v for k, v in table.items() if not isinstance(v, dict)}
        scoped.update(table.get(command, {}) if isinstance(table.get(command), dict) else {})
        for key, value in scoped.items():
            dest = key.replace("-", "_")
            if dest not in actions:
                # Top-level keys may belong to other subcommands; only a subcommand's own table is strict.
                if key in (table.get(command) or {}):
                    raise ConfigError(
                        f"{label}: unknown option {key!r} for `{command}`; see `tritune {command} --help`"
                    )
                continue
            values[dest] = _convert(actions[dest], value, f"{label}: {key}")
    for dest, action in actions.items():
        env_name = ENV_PREFIX + dest.upper()
        if env_name in environ:
            values[dest] = _convert(action, environ[env_name], f"environment variable {env_name}")
    return values


class CsvList:
    """argparse type for comma-separated lists; config files may give a TOML array instead."""

    accepts_list = True

    def __init__(self, item=str):
        self.item = item

    def __call__(self, value: str | list) -> tuple:
        items = value if isinstance(value, list) else [v.strip() for v in str(value).split(",") if v.strip()]
        return tuple(self.item(v) for v in items)


def options_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """A typed options dataclass from a parsed command line: each field from the option of the same name.

    Commands keep their defaults on the dataclass and their parsers read them from there, so a caller that builds
    the options in code (the demo) and one that parses a command line get the same values.
    """
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})
