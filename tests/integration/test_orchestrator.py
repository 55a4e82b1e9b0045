"""The orchestrator against a real Triton under real open-loop load on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time

import pytest

from builders.repository import read_manifest
from loadtest.openloop import OpenLoopLoad, constant
from orchestrator.apply import Applier, serving_config
from orchestrator.loop import LoopOptions, Orchestrator
from orchestrator.policy import Context, ControllerConfig, GuardConfig, Objective, ServingConfig, VariantInfo
from tests.integration.conftest import ADMIN_KEY, start_server
from tritune.client import InferenceClient
from tritune.server import ServerOptions, TritonServer

SLO_MS = 100.0
# The default config (1 instance, no batching) holds ~550/s of batch-1 requests on 2 cores shared with the load
# generator; with dynamic batching ~750/s.
OVERLOAD_PER_S = 620


def make_orchestrator(server: TritonServer, repository, log_path) -> Orchestrator:
    manifest = read_manifest(repository)
    variants = {
        n: VariantInfo(n, v["model_name"], v["top1"], v["latency_ms"]["batch_32"])
        for n, v in manifest["variants"].items()
    }
    ctx = Context(objective=Objective(SLO_MS, 0.0), variants=variants, cores=2, max_batch_size=64)
    options = LoopOptions(
        model="cnn",
        metrics_url=server.metrics_url,
        interval_s=1.0,
        max_backoff_s=2.0,
        decision_log=log_path,
        controller=ControllerConfig(guards=GuardConfig(upscale_delay_s=2, downscale_delay_s=120, cooldown_s=3)),
    )
    # gRPC: the orchestrator runs in its own thread and tritonclient.http (gevent) is bound to its creating thread.
    client = InferenceClient(server.grpc_url, "grpc", admin_key=ADMIN_KEY, timeout_s=120)
    return Orchestrator(Applier(client, "cnn"), ctx, options)


@pytest.fixture
def fresh_server(quick_repository, server_cache):
    srv = start_server(quick_repository, server_cache, ("cnn",))
    yield srv
    srv.stop()


def test_reaches_a_config_that_holds_the_slo_where_the_default_could_not(
    fresh_server, quick_repository, held_out, tmp_path
):
    orch = make_orchestrator(fresh_server, quick_repository, tmp_path / "decisions.jsonl")
    assert orch.applier.current()[1] == ServingConfig("fp32")  # Triton's default: 1 instance, no batching
    loop = threading.Thread(target=orch.run, args=(45,))
    loop.start()
    load = OpenLoopLoad(fresh_server.grpc_url, "cnn", held_out[0], held_out[1]).run(40, constant(OVERLOAD_PER_S))
    orch.stop()
    loop.join(timeout=30)

    windows = load.windows(5.0, SLO_MS)
    assert windows[0]["slo_met"] is False, windows[0]  # the default config cannot hold this load
    assert all(w["slo_met"] for w in windows[-3:]), windows  # the last 15 s hold the SLO
    assert load.summary()["failed"] == 0
    records = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    actions = [r for r in records if r["event"] == "action"]
    assert actions and actions[0]["rule"] == "enable-dynamic-batching"
    for a in actions:  # every action says why, from which window, what changed
        assert a["before"] != a["after"] and a["window"]["requests"] > 0 and a["reason"]
    assert any(r["event"] == "verified" for r in records)
    live = serving_config(orch.applier.client.model_config("cnn"))
    assert live == orch.current and live.dynamic_batching


def test_survives_a_triton_restart_and_reapplies_the_last_good_config(
    quick_repository, server_cache, held_out, tmp_path
):
    srv = start_server(quick_repository, server_cache, ("cnn",))
    ports = {"http_port": srv.http_port, "grpc_port": srv.grpc_port, "metrics_port": srv.metrics_port}
    orch = make_orchestrator(srv, quick_repository, tmp_path / "decisions.jsonl")
    loop = threading.Thread(target=orch.run, args=(60,))
    loop.start()
    replacement = None
    try:
        OpenLoopLoad(srv.grpc_url, "cnn", held_out[0]).run(14, constant(OVERLOAD_PER_S))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            orch.state.pending is None and orch.state.last_good.dynamic_batching
        ):
            time.sleep(0.5)
        good = orch.state.last_good
        assert good is not None and good.dynamic_batching, [(r["event"], r.get("rule")) for r in orch.history]

        srv.stop()  # Triton dies mid-run ...
        time.sleep(3)
        replacement = TritonServer(
            ServerOptions(
                repository=quick_repository, models=("cnn",), admin_key=ADMIN_KEY, cache_dir=server_cache, **ports
            )
        ).start()  # ... and comes back
        assert serving_config(InferenceClient(replacement.http_url).model_config("cnn")) == ServingConfig("fp32")
        OpenLoopLoad(replacement.grpc_url, "cnn", held_out[0]).run(6, constant(100))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            r["event"] == "action" and r["action"] == "reapply" for r in orch.history
        ):
            time.sleep(0.5)
    finally:
        orch.stop()
        loop.join(timeout=30)
        if replacement is not None:
            live = serving_config(InferenceClient(replacement.http_url).model_config("cnn"))
            replacement.stop()
        srv.stop()
    events = [r["event"] for r in orch.history]
    assert "triton-unreachable" in events and "triton-reachable-again" in events
    reapply = next(r for r in orch.history if r["event"] == "action" and r["action"] == "reapply")
    assert reapply["rule"] == "triton-restarted" and reapply["after"] == good.describe()
    assert live == good and orch.state.restarts >= 1
