"""`tritune measure`'s checks before it measures anything: the variants it is given, and whether their configs
can be versions of one public model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from builders.measure import _configs, parse_variants
from tritune.errors import ConfigError, RepositoryError

FOREIGN = Path(__file__).resolve().parents[1] / "data" / "foreign_repository"


def test_variants_are_name_equals_model():
    assert parse_variants(["fp32=textcls", "int8=textcls_int8"]) == {"fp32": "textcls", "int8": "textcls_int8"}
    for bad, message in ((["fp32"], "not NAME=MODEL"), (["a=x", "a=y"], "given twice"), ([], "at least one")):
        with pytest.raises(ConfigError, match=message):
            parse_variants(bad)


def test_variant_configs_must_differ_only_in_what_the_orchestrator_tunes(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(FOREIGN, repo)
    variants = {"fp32": "textcls", "int8": "textcls_int8"}
    assert set(_configs(repo, variants, "ladder")) == {"fp32", "int8"}
    with pytest.raises(ConfigError, match="one of the variants"):
        _configs(repo, variants, "textcls")
    config = repo / "textcls_int8" / "config.pbtxt"
    config.write_text(config.read_text() + 'parameters { key: "quantize" value: { string_value: "int8" } }\n')
    with pytest.raises(ConfigError, match="keep what tells them apart in their version folders"):
        _configs(repo, variants, "ladder")
    with pytest.raises(RepositoryError, match="does not exist"):
        _configs(repo, {"fp32": "textcls", "x": "nothing_here"}, "ladder")
