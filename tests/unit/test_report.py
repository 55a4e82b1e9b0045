"""The HTML report from a recorded run folder: windows, actions marked, config over time, variant table."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from loadtest.report import read_decisions, windows, write_report
from tritune.manifest import MANIFEST

T0 = 1_800_000_000.0


def record_run(run_dir, slow_from: float = 20.0, slow_until: float = 30.0):
    """40 s of answers at 50/s; latency 200 ms between ``slow_from`` and ``slow_until``, 5 ms elsewhere."""
    with (run_dir / "requests-1.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["end_epoch_s", "type", "latency_ms", "ok", "wrong_answers"])
        for i in range(2000):
            t = i / 50
            w.writerow([T0 + t, "gRPC", 200.0 if slow_from <= t < slow_until else 5.0, True, int(i % 100 == 0)])


def stamp(t: float) -> str:
    return datetime.fromtimestamp(T0 + t, UTC).isoformat(timespec="milliseconds")


def record_decisions(path):
    base = {"variant": "fp32", "instances": 1, "threads": 0, "dynamic_batching": False, "max_queue_delay_us": 0,
            "preferred_batch_sizes": []}  # fmt: skip
    after = {**base, "dynamic_batching": True, "max_queue_delay_us": 500, "preferred_batch_sizes": [4, 8, 16]}
    lines = [
        {"seq": 1, "time_utc": stamp(0), "event": "start", "config": base},
        {
            "seq": 2,
            "time_utc": stamp(22),
            "event": "action",
            "rule": "enable-dynamic-batching",
            "reason": "p99 high",
            "before": base,
            "after": after,
        },
        {"seq": 3, "time_utc": stamp(39), "event": "stop", "config": after},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n" + '{"seq": 4, "time_')  # a torn last line


def test_windows_and_slo_attainment_from_per_request_records(tmp_path):
    record_run(tmp_path)
    from loadtest.run import read_requests

    rows = read_requests(tmp_path)
    ws = windows(rows, T0, slo_ms=50)
    assert len(ws) == 8
    assert [w["slo_met"] for w in ws] == [True] * 4 + [False] * 2 + [True] * 2
    assert ws[0]["throughput_req_per_s"] == pytest.approx(50, abs=0.5)
    assert ws[4]["p99_ms"] == 200.0


def test_report_marks_actions_and_plots_the_config_over_time(tmp_path):
    record_run(tmp_path)
    log = tmp_path / "decisions.jsonl"
    record_decisions(log)
    decisions = read_decisions(log)
    assert [d["event"] for d in decisions] == ["start", "action", "stop"]  # the torn line is skipped
    path = write_report(tmp_path, "demo <test>", slo_p99_ms=50, decision_log=log)
    text = path.read_text()
    assert "<title>demo &lt;test&gt;</title>" in text  # escaped
    assert text.count("data:image/png;base64,") == 2  # timeline + config
    assert "1: enable-dynamic-batching" in text
    assert "6/8 (75%)" in text  # 5-s windows meeting the SLO
    assert "t=22 s" in text
    assert json.loads((tmp_path / "windows.json").read_text())[4]["slo_met"] is False


def test_report_with_the_variant_table(tmp_path, quick_manifest):
    record_run(tmp_path)
    text = write_report(tmp_path, "r", repository=quick_manifest).read_text()
    assert "<h2>Variants</h2>" in text and "pruned" in text and "97.50%" in text


@pytest.fixture
def quick_manifest(tmp_path_factory):
    from tests.unit.test_manifest import manifest, record

    root = tmp_path_factory.mktemp("repo")
    variant = replace(record("pruned", 0.975, 8.0), latency_ms={"batch_1": 0.5, "batch_32": 8.0})
    fp32 = replace(record("fp32", 0.975, 28.0), latency_ms={"batch_1": 1.0, "batch_32": 28.0})
    m = replace(
        manifest(),
        dataset={"name": "digits", "held_out_images": 360},
        host={"machine": "x86_64"},
        variants={"fp32": fp32, "pruned": variant},
    )
    m.write(root / MANIFEST)
    return root
