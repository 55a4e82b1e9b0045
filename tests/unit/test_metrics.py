"""Window statistics from recorded Triton /metrics text (two scrapes 3 s apart under load)."""

from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.metrics import Window, parse_metrics, window

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def snaps():
    a = parse_metrics((DATA / "triton_metrics_1.txt").read_text(), 100.0)
    b = parse_metrics((DATA / "triton_metrics_2.txt").read_text(), 103.0)
    return a, b


def test_parse_reads_counters_gauges_and_quantiles(snaps):
    _, b = snaps
    m = b.models["cnn"]
    assert m.success == 1815 and m.inferences == 3630 and m.executions == 1815
    assert m.pending == 2 and m.failure == 0
    assert set(m.request_quantiles_us) >= {0.5, 0.9, 0.99}
    assert m.request_quantiles_us[0.99] == 9148
    assert 0 <= b.cpu_utilization <= 1 and b.cpu_memory_used_bytes > 0
    assert b.gpu_utilization == {}


def test_window_from_counter_deltas(snaps):
    a, b = snaps
    w = window(a, b, "cnn")
    ma, mb = a.models["cnn"], b.models["cnn"]
    n = mb.success - ma.success
    assert w.requests == n and w.interval_s == pytest.approx(3.0)
    assert w.throughput_infer_per_s == pytest.approx((mb.inferences - ma.inferences) / 3.0)
    assert w.request_rate_per_s == pytest.approx(n / 3.0)
    assert w.avg_batch == pytest.approx(2.0)  # clients sent batches of 2, no dynamic batching
    assert w.avg_latency_ms == pytest.approx((mb.request_us - ma.request_us) / n / 1000)
    assert w.avg_queue_ms == pytest.approx((mb.queue_us - ma.queue_us) / n / 1000)
    assert 0 < w.avg_compute_ms < w.avg_latency_ms
    assert w.p99_latency_ms == pytest.approx(9.148)
    assert 0 < w.busy_s <= 3.0 and w.failure_rate == 0.0 and not w.restarted


def test_a_window_comes_back_from_its_decision_log_summary(snaps):
    a, b = snaps
    w = replace(window(a, b, "cnn"), replica_pending=(("r0", 2.0), ("r1", 0.0)))
    back = Window.from_summary(w.summary())
    assert back.summary() == w.summary()
    assert back.replica_pending == w.replica_pending and back.requests == w.requests


def test_counters_going_backwards_mean_a_restart(snaps):
    a, b = snaps
    w = window(b, replace(a, time_s=110.0), "cnn")
    assert w.restarted and w.requests == 0


def test_unknown_model_is_flagged_missing(snaps):
    a, b = snaps
    assert window(a, b, "not_loaded").model_missing


def _text(version_counts: dict[str, int]) -> str:
    lines = []
    for version, n in version_counts.items():
        labels = f'model="cnn",version="{version}"'
        lines += [
            f"nv_inference_request_success{{{labels}}} {n}",
            f"nv_inference_count{{{labels}}} {n}",
            f"nv_inference_exec_count{{{labels}}} {n}",
            f"nv_inference_request_duration_us{{{labels}}} {n * 1000}",
        ]
    return "\n".join(lines) + "\n"


def test_a_variant_switch_is_not_a_restart():
    # version 1 served 5000 requests, then the policy switched to version 5: Triton drops version 1's series
    a = parse_metrics(_text({"1": 5000}), 0.0)
    b = parse_metrics(_text({"5": 300}), 2.0)
    w = window(a, b, "cnn")
    assert not w.restarted and w.requests == 300 and w.throughput_infer_per_s == 150
    both = parse_metrics(_text({"1": 5100, "5": 50}), 1.0)
    w = window(a, both, "cnn")
    assert not w.restarted and w.requests == 150


def test_a_version_counting_backwards_is_a_restart():
    assert window(parse_metrics(_text({"1": 5000}), 0.0), parse_metrics(_text({"1": 10}), 2.0), "cnn").restarted


def test_the_unloading_version_reporting_zeros_is_not_a_restart():
    """Measured on Triton 2.51: while the old variant's version unloads, its series read 0 for a scrape before
    they disappear. Another version carried on, so this is the switch finishing, not a restart."""
    a = parse_metrics(_text({"1": 4460, "3": 1707}), 0.0)
    b = parse_metrics(_text({"1": 0, "3": 3201}), 2.0)
    w = window(a, b, "cnn")
    assert not w.restarted and w.requests == 3201 - 1707
    # every version back to zero is still a restart
    assert window(a, parse_metrics(_text({"1": 0, "3": 0}), 2.0), "cnn").restarted
    assert window(parse_metrics(_text({"3": 900}), 0.0), parse_metrics(_text({"3": 0}), 2.0), "cnn").restarted


def test_versions_counts_only_series_that_serve_or_drain():
    a = parse_metrics(_text({"1": 4460, "3": 1707}), 0.0)
    assert window(a, parse_metrics(_text({"1": 4500, "3": 1900}), 1.0), "cnn").versions == 2  # old one draining
    zero = parse_metrics(_text({"1": 0, "3": 3201}), 2.0)
    assert window(a, zero, "cnn").versions == 1
    # the left version's zeroed series may linger for more than one scrape: still gone
    assert window(zero, parse_metrics(_text({"1": 0, "3": 3500}), 3.0), "cnn").versions == 1
