"""bench/peers.py's reading of the field's tools: Model Analyzer's checkpoint (recorded from a real quick search of
Model Analyzer 1.58 on this repository's int8 variant), the agreement rule, and the missing-tool message."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.peers import PeersError, Tools, _agreement, _ma_results, render

DATA = Path(__file__).resolve().parents[1] / "data" / "model_analyzer"


def test_model_analyzers_checkpoint_reads_as_every_point_and_its_best_within_the_slo():
    r = _ma_results(DATA, "cnn_int8", slo_ms=50.0)
    assert (r["configs_measured"], r["points_measured"]) == (6, 21)
    best = r["best"]
    assert best["config_name"] == "cnn_int8_config_4" and best["concurrency"] == 64
    assert best["p99_ms"] <= 50 and best["throughput_per_s"] == pytest.approx(2618.27)
    # its knobs from the config it wrote: Model Analyzer tunes max_batch_size, which tritune's sweep does not
    assert best["knobs"] == {"max_batch_size": 16, "instances": 2, "dynamic_batching": True, "max_queue_delay_us": 0}
    assert r["default_best_throughput_per_s"] == pytest.approx(1268.28)
    # a tighter SLO picks another point, and none is an error-free "best"
    tight = _ma_results(DATA, "cnn_int8", slo_ms=3.0)
    assert tight["best"]["p99_ms"] <= 3.0 and tight["best"]["config_name"] == "cnn_int8_config_default"
    assert tight["best"]["knobs"]["max_batch_size"] == 64 and not tight["best"]["knobs"]["dynamic_batching"]


def test_generators_agree_when_throughput_and_p99_are_within_ten_percent():
    def row(pa, us):
        return {"perf_analyzer": {"ok": True, **pa}, "tritune": {"ok": True, **us}}

    runs = {
        "default/http/concurrency=1": [
            row({"throughput_per_s": 1000.0, "p99_ms": 2.0}, {"throughput_per_s": 950.0, "p99_ms": 2.1}),
            row({"throughput_per_s": 1100.0, "p99_ms": 2.2}, {"throughput_per_s": 1000.0, "p99_ms": 2.0}),
            row({"throughput_per_s": 1050.0, "p99_ms": 2.1}, {"throughput_per_s": 990.0, "p99_ms": 2.2}),
        ],
        "default/grpc/concurrency=1": [
            row({"throughput_per_s": 900.0, "p99_ms": 4.0}, {"throughput_per_s": 630.0, "p99_ms": 5.0}),
        ],
    }
    out = _agreement(runs)
    http = out["default/http/concurrency=1"]
    assert http["perf_analyzer"]["throughput_per_s"] == 1050.0 and http["tritune"]["throughput_per_s"] == 990.0
    assert http["tritune_over_perf_analyzer"] == {"throughput_per_s": 0.943, "p99_ms": 1.0} and http["within_10pct"]
    assert not out["default/grpc/concurrency=1"]["within_10pct"]  # 0.7× the throughput
    assert not out["default/grpc/concurrency=1"]["agree"]
    # a p99 30% apart in the medians, inside the spread of the tools' own repeats: no disagreement
    noisy = _agreement(
        {
            "batching/http/rate=400": [
                row({"throughput_per_s": 400.0, "p99_ms": 3.2}, {"throughput_per_s": 400.0, "p99_ms": 4.3}),
                row({"throughput_per_s": 400.0, "p99_ms": 5.7}, {"throughput_per_s": 400.0, "p99_ms": 4.2}),
                row({"throughput_per_s": 400.0, "p99_ms": 5.2}, {"throughput_per_s": 400.0, "p99_ms": 3.2}),
            ]
        }
    )["batching/http/rate=400"]
    assert not noisy["within_10pct"] and noisy["agree"]
    assert noisy["perf_analyzer"]["p99_range_ms"] == [3.2, 5.7]


def test_a_missing_tool_says_to_run_make_peers(tmp_path):
    with pytest.raises(PeersError, match="run `make peers`"):
        Tools.find(tmp_path)


def test_the_search_table_renders_each_arms_best_and_the_yardstick():
    result = {
        "commit": "abc1234", "date": "2026-12-07 16:00 UTC", "machine": "x86_64, 2 cores",
        "command": "python bench/peers.py",
        "slo_p99_ms": 50.0, "repeats": 3, "model": {"public": "cnn", "variant": "int8", "top1": 0.8593},
        "tools": {"perf_analyzer": "Perf Analyzer Version 2.51.0", "model_analyzer": "1.58.0", "caddy": "v2.6.2",
                  "haproxy": "HAProxy 2.6.12", "nginx": "nginx/1.22.1"},
        "search": {
            "caps": {"max_instances": 2, "max_batch_size": 32, "max_concurrency": 64, "slo_p99_ms": 50.0},
            "model_analyzer_quick": {"wall_s": 210.0, **_ma_results(DATA, "cnn_int8", 50.0)},
            "yardstick": {
                "model_analyzer_quick": {"best": {"throughput_per_s": 2500.0, "p99_ms": 30.0, "concurrency": 32}}
            },
        },
    }  # fmt: skip
    text = render(result)
    assert "| model_analyzer_quick | 210 | 6 |" in text and '"max_batch_size": 16' in text
    assert "2,500.0 at 30.0 ms (c=32)" in text
