"""Test tiers come from the folder: tests/unit → ``unit``, tests/integration → ``integration``, tests/e2e → ``e2e``."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def quick_cache(tmp_path_factory) -> Path:
    """The checkpoint cache of the quick build: a later quick build with it retrains nothing. TRITUNE_TEST_CACHE
    names a folder that keeps it across sessions (repeated runs of a tier); by default each session trains anew."""
    keep = os.environ.get("TRITUNE_TEST_CACHE")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return Path(keep)
    return tmp_path_factory.mktemp("quick-cache")


@pytest.fixture(scope="session")
def quick_repository(tmp_path_factory, quick_cache) -> Path:
    """All five variants + the public model, built as ``tritune demo --quick`` builds them (bundled digits)."""
    from builders.build import QUICK_BUILD, build

    root = tmp_path_factory.mktemp("quick")
    opts = replace(QUICK_BUILD, repository=root / "repo", cache_dir=quick_cache)
    build(opts, log=lambda _m: None)
    return opts.repository


@pytest.fixture(scope="session")
def held_out():
    from builders.data import load_dataset

    data = load_dataset("digits")
    return data.x_test, data.y_test


@pytest.fixture(scope="session")
def server_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("triton-cache")
