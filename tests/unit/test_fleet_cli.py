"""``tritune orchestrate``'s fleet options: one way to name the replicas, checked before anything is contacted."""

from __future__ import annotations

import argparse

import pytest

from orchestrator.cli import OrchestrateOptions, add_arguments, build, parse_labels, replica_specs, validate
from tritune.errors import ConfigError, ServerUnavailableError
from tritune.settings import options_from_args


def options(*argv: str) -> OrchestrateOptions:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return options_from_args(OrchestrateOptions, parser.parse_args(list(argv)))


def test_replicas_come_one_way_only(tmp_path):
    with pytest.raises(ConfigError, match="one way"):
        validate(options("--fleet", str(tmp_path / "f.json"), "--replicas-dns", "triton"))
    with pytest.raises(ConfigError, match="one way"):
        validate(options("--replica", "a:1,http://a:2/metrics", "--replicas-dns", "triton"))


def test_repeated_replica_flags_and_their_environment_form():
    opts = options("--replica", "a:1,http://a:2/metrics", "--replica", "b:1,http://b:2/metrics")
    assert replica_specs(opts.replica) == ("a:1,http://a:2/metrics", "b:1,http://b:2/metrics")
    assert replica_specs("a:1,http://a:2/metrics; b:1,http://b:2/metrics") == replica_specs(opts.replica)


def test_label_matchers():
    assert parse_labels("handler=reverse_proxy,server=grpc") == {"handler": "reverse_proxy", "server": "grpc"}
    assert parse_labels("") == {}
    with pytest.raises(ConfigError, match="key=value"):
        parse_labels("handler")


def test_a_bad_fleet_file_stops_the_orchestrator_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITUNE_ADMIN_KEY", "k")
    path = tmp_path / "fleet.json"
    path.write_text('{"replicas": "two"}')
    with pytest.raises(ConfigError, match="non-empty list") as err:
        build(options("--fleet", str(path), "--metrics-port", "0"))
    assert "\n" not in str(err.value)


def test_no_replica_answering_at_start_says_so(monkeypatch):
    monkeypatch.setenv("TRITUNE_ADMIN_KEY", "k")
    with pytest.raises(ServerUnavailableError, match="no replica answers"):
        build(options("--replica", "127.0.0.1:9,http://127.0.0.1:9/metrics", "--metrics-port", "0"))
