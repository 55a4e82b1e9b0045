"""Shared real parts for the integration tier: one quick build, real tritonserver processes on free ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from builders.build import BuildOptions, build
from builders.data import load_dataset
from tritune.server import ServerOptions, TritonServer

ADMIN_KEY = "test-admin-key"


@pytest.fixture(scope="session")
def quick_repository(tmp_path_factory) -> Path:
    """All five variants + the public model, trained a little on the bundled digits."""
    root = tmp_path_factory.mktemp("quick")
    opts = BuildOptions(
        repository=root / "repo",
        cache_dir=root / "cache",
        dataset="digits",
        subset=240,
        epochs=2,
        finetune_epochs=1,
        distill_epochs=1,
        calibration_size=32,
        latency_runs=1,
    )
    build(opts, log=lambda _m: None)
    return opts.repository


@pytest.fixture(scope="session")
def held_out():
    data = load_dataset("digits")
    return data.x_test, data.y_test


@pytest.fixture(scope="session")
def server_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("triton-cache")


def start_server(repository: Path, cache: Path, models: tuple[str, ...], **kw) -> TritonServer:
    return TritonServer(
        ServerOptions(repository=repository, models=models, admin_key=ADMIN_KEY, cache_dir=cache, **kw)
    ).start()


@pytest.fixture(scope="module")
def server(quick_repository, server_cache):
    models = tuple(sorted(p.name for p in quick_repository.iterdir() if (p / "config.pbtxt").exists()))
    srv = start_server(quick_repository, server_cache, models)
    yield srv
    srv.stop()
