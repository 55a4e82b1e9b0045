"""Shared real parts for the integration tier: one quick build, real tritonserver processes on free ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from tritune.server import ServerOptions, TritonServer

ADMIN_KEY = "test-admin-key"


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
