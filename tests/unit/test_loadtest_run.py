"""The load-test runner's pieces that need no server: the Locust command line, and the verdict on a run folder."""

from __future__ import annotations

import json

import pytest

from loadtest.run import LoadTestOptions, answers, collect, locust_command
from tritune.errors import ConfigError, LoadTestError


def test_headless_command_carries_every_output_and_the_shape(tmp_path):
    opts = LoadTestOptions(protocol="both", shape="step:values=2/8,step_s=10", open_loop=True, batch_size=4)
    cmd = locust_command(opts, tmp_path, tmp_path / "images.npz")
    joined = " ".join(cmd)
    for flag in ("--headless", "--csv-full-history", "--html", "--json-file", "--exit-code-on-error 1", "--open-loop"):
        assert flag in joined
    assert cmd[cmd.index("--load-shape") + 1] == "step:values=2/8,step_s=10"
    assert cmd[cmd.index("-t") + 1] == "50s"  # the shape's 20 s + a 30 s safety net
    assert cmd[-2:] == ["TritonHttpUser", "TritonGrpcUser"]


def test_distributed_commands_bind_the_master_to_localhost(tmp_path):
    opts = LoadTestOptions(workers=3)
    master = locust_command(opts, tmp_path, tmp_path / "i.npz", "master", 5557)
    worker = locust_command(opts, tmp_path, tmp_path / "i.npz", "worker", 5557)
    assert master[master.index("--master-bind-host") + 1] == "127.0.0.1"
    assert master[master.index("--expect-workers") + 1] == "3"
    assert "--worker" in worker and worker[worker.index("--master-port") + 1] == "5557"
    assert "--csv" not in worker  # only the master writes the stats


def test_web_mode_keeps_the_ui_on_localhost(tmp_path):
    cmd = locust_command(LoadTestOptions(web=True, web_port=8123), tmp_path, tmp_path / "i.npz")
    assert "--headless" not in cmd and "--autostart" in cmd
    assert cmd[cmd.index("--web-host") + 1] == "127.0.0.1" and cmd[cmd.index("--web-port") + 1] == "8123"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(protocol="ftp"), "--protocol"),
        (dict(batch_size=0), "--batch-size"),
        (dict(shape="wave:value=1"), "unknown load shape"),
        (dict(workers=-1), "--workers"),
    ],
)
def test_bad_options_are_one_line_config_errors(kw, message):
    with pytest.raises(ConfigError, match=message):
        LoadTestOptions(**kw).validate()


def test_a_saturated_load_generator_makes_the_run_invalid(tmp_path):
    summary = {"requests": 10, "failures": 0, "wrong_answers": 0, "cpu_warning": False, "worker_cpu_warning": True}
    (tmp_path / "locust_summary.json").write_text(json.dumps(summary))
    result = collect(tmp_path, 0)
    assert not result.valid and "90% CPU" in result.invalid_reason
    assert json.loads((tmp_path / "result.json").read_text())["valid"] is False
    (tmp_path / "locust_summary.json").write_text(json.dumps({**summary, "worker_cpu_warning": False}))
    assert collect(tmp_path, 0).valid


def test_a_locust_that_died_says_where_to_look(tmp_path):
    (tmp_path / "locust.stderr").write_text("Traceback...\nImportError: no module named grpc\n")
    with pytest.raises(LoadTestError, match="ImportError: no module named grpc"):
        collect(tmp_path, 1)


def test_wrong_answers_are_reported_as_a_share_of_the_answered_images_not_of_the_requests():
    # batch-8 requests: 100 answered, 40 images wrong of 800 (a count beside "requests" would read as 40%)
    summary = {"requests": 102, "failures": 2, "wrong_answers": 40, "batch_size": 8}
    assert answers(summary) == "40 of 800 answered samples misclassified (top-1 0.950)"
    assert answers({"requests": 0, "failures": 0, "wrong_answers": 0}) == "0 misclassified samples"
    assert "of 10 answered samples" in answers({"requests": 10, "failures": 0, "wrong_answers": 1})  # batch 1


def test_answers_without_labels_are_not_called_right():
    summary = {"requests": 10, "failures": 0, "wrong_answers": 0, "answers_checked": False}
    assert answers(summary).startswith("answers not checked")


def test_a_stats_row_whose_requests_all_failed_reads_na_as_no_figure(tmp_path):
    """Locust writes "N/A" for the percentiles of a row no request succeeded in: no figure, not a crash."""
    import json

    from loadtest.run import collect

    (tmp_path / "locust_summary.json").write_text(json.dumps({"requests": 4, "failures": 4}))
    (tmp_path / "locust_stats.csv").write_text(
        "Type,Name,Request Count,Failure Count,50%,95%,99%,Requests/s\n"
        "HTTP,cnn [batch 32],4,4,N/A,N/A,N/A,0.8\n"
        "Aggregated,,4,4,,,,\n"
    )
    stats = collect(tmp_path, 1).summary["stats"]
    assert stats["HTTP cnn [batch 32]"] == {
        "requests": 4, "failures": 4, "p50_ms": None, "p95_ms": None, "p99_ms": None, "throughput_req_per_s": 0.8
    }  # fmt: skip
    assert stats["Aggregated"]["throughput_req_per_s"] == 0.0
