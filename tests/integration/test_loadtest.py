"""Real Locust runs (HTTP, gRPC, open loop, distributed) and a real sweep against a real Triton on 127.0.0.1."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys

import pytest

from loadtest.report import write_report
from loadtest.run import LoadTestOptions, read_requests, run_locust
from loadtest.sweep_cli import add_arguments, sweep
from tests.integration.conftest import ADMIN_KEY
from tritune.apply import Applier
from tritune.client import InferenceClient
from tritune.errors import ModelNotFoundError


def options(server, tmp_path, **kw) -> LoadTestOptions:
    base = dict(
        http_url=server.http_url,
        grpc_url=server.grpc_url,
        model="cnn",
        shape="constant:value=2,duration_s=4",
        out_dir=tmp_path,
        dataset="digits",
    )
    return LoadTestOptions(**{**base, **kw})


def check_run(result, protocol_type: str):
    s = result.summary
    assert result.exit_code == 0, (result.run_dir / "locust.log").read_text()[-2000:]
    assert s["requests"] > 0 and s["failures"] == 0
    row = s["stats"][f"{protocol_type} cnn [batch {1}]"]
    # Locust writes its CSV a moment before the last answers: the totals at quit may be up to ~2% ahead
    assert 0 <= s["requests"] - row["requests"] <= max(10, 0.02 * s["requests"])
    assert row["failures"] == 0 and row["p99_ms"] > 0
    records = read_requests(result.run_dir)
    assert len(records) == s["requests"] and all(r["ok"] for r in records)
    assert {r["type"] for r in records} == {protocol_type}
    # every answer is checked: wrong answers are counted apart from errors, and they add up
    assert s["wrong_answers"] == sum(r["wrong_answers"] for r in records)
    assert s["wrong_answers"] < s["requests"]  # the model is far better than chance
    for name in ("locust_stats.csv", "locust_stats_history.csv", "locust.html", "locust.json", "result.json"):
        assert (result.run_dir / name).stat().st_size > 0, name
    with (result.run_dir / "locust_stats_history.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) >= 2


def test_http_users_closed_loop(server, tmp_path):
    result = run_locust(options(server, tmp_path, protocol="http"))
    check_run(result, "HTTP")
    report = write_report(result.run_dir, "http", slo_p99_ms=100)
    text = report.read_text()
    assert "Throughput and latency" in text and text.count("data:image/png;base64,") == 1


def test_grpc_users_open_loop_hold_the_rate(server, tmp_path):
    result = run_locust(
        options(server, tmp_path, protocol="grpc", open_loop=True, shape="constant:value=40,duration_s=5")
    )
    check_run(result, "gRPC")
    # the schedule, not the answers, sets the pace: 40 req/s for 5 s
    assert 150 <= result.summary["requests"] <= 230


def test_distributed_master_and_workers(server, tmp_path):
    result = run_locust(options(server, tmp_path, protocol="grpc", workers=2))
    check_run(result, "gRPC")
    assert result.summary["mode"] == "distributed" and result.summary["workers"] == 2
    assert len(list(result.run_dir.glob("requests-*.csv"))) == 2  # each worker sent some of the load


def test_errors_are_counted_and_fail_the_run(server, tmp_path):
    # A deadline no request meets: every one fails on the client's side, and Locust's exit code says so. Paced, so
    # that the requests the server still runs after their clients gave up leave no backlog for the next test.
    opts = options(server, tmp_path, protocol="http", batch_size=32, request_timeout_s=0.0005, wait_ms=200)
    result = run_locust(opts)
    assert result.exit_code == 1
    assert result.summary["failures"] == result.summary["requests"] > 0
    assert (result.run_dir / "locust_failures.csv").read_text().count("\n") > 1


def test_an_unknown_model_is_one_clear_error_before_any_load(server, tmp_path):
    with pytest.raises(ModelNotFoundError, match="no_such_model"):
        run_locust(options(server, tmp_path, protocol="http", model="no_such_model"))


def test_loadtest_cli_rejects_a_bad_shape_in_one_line(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "console", "loadtest", "--shape", "zigzag:value=3", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "unknown load shape 'zigzag'" in res.stderr


def test_sweep_over_a_tiny_space_returns_a_frontier_and_marks_the_baseline(
    server, quick_repository, tmp_path, monkeypatch
):
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(
        [
            "--repository",
            str(quick_repository),
            "--url",
            server.grpc_url,
            "--http-url",
            server.http_url,
            "--variants",
            "fp32,pruned",
            "--instances",
            "1",
            "--queue-delays-us",
            "off,1000",
            "--concurrency",
            "1,4",
            "--window-s",
            "1",
            "--max-windows",
            "4",
            "--slo-p99-ms",
            "500",
        ]
    )
    monkeypatch.setenv("TRITUNE_ADMIN_KEY", ADMIN_KEY)
    client = InferenceClient(server.grpc_url, "grpc", admin_key=ADMIN_KEY)
    before = Applier(client, "cnn").current()[1]
    result = sweep(args, tmp_path, progress=lambda _m: None)
    after = Applier(client, "cnn").current()[1]
    points = result["points"]
    assert points[0]["baseline"] and points[0]["config"]["variant"] == "fp32"
    assert [p["concurrency"] for p in points if p["baseline"]] == [1, 4]
    assert {p["config"]["variant"] for p in points} == {"fp32", "pruned"}
    assert all(p["measurement"]["failures"] == 0 and p["measurement"]["requests"] > 0 for p in points)
    assert result["frontier"] and result["best"]
    assert result["best"]["measurement"]["p99_ms"] <= 500
    assert json.loads((tmp_path / "sweep.json").read_text())["best"] == result["best"]
    assert (result["protocol"], result["measured_on"]) == ("http", server.http_url)  # the cheaper client
    # the config served before the sweep is served again after it
    assert after == before


@pytest.fixture(autouse=True)
def _no_locust_left_behind():
    yield
    out = subprocess.run(["pgrep", "-f", "loadtest/locustfile.py"], capture_output=True, text=True)
    assert out.stdout.strip() == "", "a Locust process outlived its test"


def test_web_ui_stays_up_for_interactive_use_until_stopped(server, tmp_path):
    import signal
    import time
    import urllib.request

    from tritune.server import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "console", "loadtest", "--url", server.http_url, "--web"),
            *("--web-port", str(port), "--shape", "constant:value=1,duration_s=2", "--out", str(tmp_path)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status is None:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status
            except OSError:
                time.sleep(0.5)
        assert status == 200
        time.sleep(4)  # the shape is over; the UI must still answer
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert "run folder:" in out, out
