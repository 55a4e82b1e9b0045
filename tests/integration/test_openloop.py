"""The open-loop generator against a real Triton, over both transports: answers checked against the labels, the
schedule kept, failures recorded with the server's reason, and the generator's own cost reported."""

from __future__ import annotations

import pytest

from builders.models import SEED_SIGNATURE as SEED
from loadtest.openloop import OpenLoopLoad, constant
from tritune.errors import ModelNotFoundError


def url_of(server, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("batch", [1, 3])
def test_answers_are_checked_and_the_schedule_kept(server, held_out, protocol, batch):
    images, labels = held_out
    load = OpenLoopLoad(url_of(server, protocol), "cnn_fp32", images, labels, batch=batch, protocol=protocol)
    result = load.run(3.0, constant(40))
    assert result.sent == len(result.records) == 120
    assert not result.failures, result.failures[:1]
    assert all(r.correct is not None for r in result.records)  # every reply was parsed and checked
    # counted per image: the quick build's fp32 is far better than chance (0.1 per image)
    assert all(r.images == batch and 0 <= r.correct <= batch for r in result.records)
    assert sum(r.correct for r in result.records) > 0.3 * batch * len(result.records)
    assert result.summary()["wrong_answers"] == sum(batch - r.correct for r in result.records)
    assert result.top1 == pytest.approx(sum(r.correct for r in result.records) / (batch * len(result.records)))
    scheduled = [r.scheduled_s for r in result.records]
    assert scheduled == sorted(scheduled) and scheduled[-1] == pytest.approx(119 / 40)
    gen = result.generator.report()
    assert gen["cpu_core_share"] > 0 and gen["send_lag_p99_ms"] is not None
    assert set(gen) >= {"machine_cpu_share", "valid", "invalid_because"}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_unknown_model_fails_each_request_with_the_servers_reason(server, held_out, protocol):
    # Given the signature, the generator asks the server nothing before its clock starts: each request fails alone.
    load = OpenLoopLoad(url_of(server, protocol), "no_such_model", held_out[0], protocol=protocol, signature=SEED)
    result = load.run(0.5, constant(10))
    assert len(result.failures) == len(result.records) == 5
    assert all("no_such_model" in r.error for r in result.failures)


def test_no_server_is_a_failure_per_request_not_a_crash(held_out):
    load = OpenLoopLoad("127.0.0.1:9", "cnn", held_out[0], protocol="http", timeout_s=2, signature=SEED)
    result = load.run(0.5, constant(10))
    assert len(result.failures) == 5 and "cannot connect" in result.failures[0].error


def test_without_a_signature_an_unknown_model_is_one_clear_error(server, held_out):
    with pytest.raises(ModelNotFoundError, match="no_such_model"):
        OpenLoopLoad(server.grpc_url, "no_such_model", held_out[0])


def test_a_request_past_its_deadline_is_failed(server, held_out):
    # batch 64 of the slowest variant at a rate no 2-core machine serves within 50 ms
    load = OpenLoopLoad(server.http_url, "cnn_fp32", held_out[0], batch=64, protocol="http", timeout_s=0.05)
    result = load.run(1.0, constant(50))
    assert result.failures and all("connection lost" in r.error for r in result.failures)
    assert len(result.records) == result.sent


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_closed_loop_keeps_its_concurrency_in_flight_and_stops_when_told(server, held_out, protocol):
    images, labels = held_out
    load = OpenLoopLoad(url_of(server, protocol), "cnn_fp32", images, labels, protocol=protocol)
    # Stopped by its count of answers, not by the clock: the server may still be working off an earlier test's
    # queue (the deadline test leaves batch-64 requests behind it), and a busy machine serves slowly.
    result = load.run_closed(120.0, 3, until=lambda res, _seconds: len(res.records) >= 30)
    assert not result.failures, result.failures[:1]
    assert result.sent == len(result.records) >= 30
    assert all(r.correct is not None for r in result.records)
    # a record's scheduled_s is its real send: each send leaves after an answer, so at most 3 overlap, and 3 do
    spans = [(r.scheduled_s, r.scheduled_s + r.latency_ms / 1000) for r in result.records]
    in_flight = [sum(1 for a, b in spans if a <= s < b) for s, _ in spans]
    assert max(in_flight) == 3
    early = load.run_closed(60.0, 2, until=lambda _result, seconds: seconds >= 0.5)
    assert early.duration_s < 5 and len(early.records) == early.sent > 0
