"""The fleet's pure parts: the fleet file, the front door's histogram turned into a window's p99, the fleet window,
the Caddy config, and the orchestrator over recorded metrics (the blind spot). Real replicas and a real Caddy are
in tests/integration/test_fleet.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from orchestrator.fleet import (
    DnsReplicas,
    Fleet,
    FrontDoorLatency,
    StaticReplicas,
    fleet_window,
    parse_histogram,
    with_end_to_end,
)
from orchestrator.loop import LoopOptions, Orchestrator
from orchestrator.metrics import Window
from orchestrator.policy import Action, Context, Objective, ServingConfig, VariantInfo
from tritune import slo
from tritune.apply import ApplyResult
from tritune.errors import ConfigError
from tritune.fleet import FleetFile, FrontDoorEndpoints, ReplicaEndpoints, parse_replica
from tritune.frontdoor import (
    CADDY_BUCKETS_S,
    REFUSED_GRPC_METHODS,
    DnsUpstreams,
    FrontDoorSettings,
    Upstream,
    caddy_config,
)

DATA = Path(__file__).parent.parent / "data"
GOLDEN = Path(__file__).parent.parent / "golden"


# -- the fleet file -------------------------------------------------------------------------------------------------
def test_fleet_file_round_trips(tmp_path):
    spec = FleetFile(
        replicas=(
            ReplicaEndpoints("replica-0", "127.0.0.1:1001", "http://127.0.0.1:1002/metrics", "127.0.0.1:1000"),
            ReplicaEndpoints("replica-1", "127.0.0.1:2001", "http://127.0.0.1:2002/metrics"),
        ),
        front_door=FrontDoorEndpoints("127.0.0.1:8000", "127.0.0.1:8001", "http://127.0.0.1:8003/metrics"),
        cores_per_replica=1,
    )
    assert FleetFile.read(spec.write(tmp_path / "fleet.json")) == spec


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("not json", "not valid JSON"),
        ("[]", "top level must be an object"),
        ('{"replicas": []}', "non-empty list"),
        ('{"replicas": [{"grpc_url": "a:1"}]}', "lacks metrics_url"),
        ('{"schema": 9, "replicas": [{"grpc_url": "a:1", "metrics_url": "http://a:2/metrics"}]}', "schema 9"),
        (
            '{"replicas": [{"name": "x", "grpc_url": "a:1", "metrics_url": "http://a/m"},'
            ' {"name": "x", "grpc_url": "b:1", "metrics_url": "http://b/m"}]}',
            "names repeat",
        ),
        ('{"replicas": [{"grpc_url": "a:1", "metrics_url": "http://a/m"}], "front_door": {}}', "front_door"),
        ('{"replicas": [{"grpc_url": "a:1", "metrics_url": "http://a/m"}], "cores_per_replica": 0}', "positive"),
    ],
)
def test_a_bad_fleet_file_gets_one_line_saying_what_is_wrong(tmp_path, content, says):
    path = tmp_path / "fleet.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=says) as err:
        FleetFile.read(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_missing_fleet_file_says_who_writes_one(tmp_path):
    with pytest.raises(ConfigError, match="tritune serve --replicas"):
        FleetFile.read(tmp_path / "none.json")


def test_replica_flags():
    r = parse_replica("127.0.0.1:8001,http://127.0.0.1:8002/metrics", 3)
    assert (r.name, r.grpc_url, r.metrics_url) == ("replica-3", "127.0.0.1:8001", "http://127.0.0.1:8002/metrics")
    for bad in ("127.0.0.1:8001", "http://127.0.0.1:8001,http://x/metrics", "a:1,b:2"):
        with pytest.raises(ConfigError, match="GRPC_URL,METRICS_URL"):
            parse_replica(bad)


def test_dns_replicas_are_re_resolved_and_keep_the_last_answer_on_a_failed_lookup():
    answers = [["10.0.0.2", "10.0.0.1"], OSError("no such host"), ["10.0.0.3"]]

    def resolve(_name):
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    dns = DnsReplicas("triton", 8001, 8002, resolve=resolve)
    first = dns.replicas()
    assert [r.grpc_url for r in first] == ["10.0.0.1:8001", "10.0.0.2:8001"]
    assert first[0].metrics_url == "http://10.0.0.1:8002/metrics"
    assert dns.replicas() == first and "no such host" in dns.error
    assert [r.name for r in dns.replicas()] == ["10.0.0.3"] and dns.error is None


# -- the histogram --------------------------------------------------------------------------------------------------
def test_histogram_quantile_interpolates_as_prometheus_does():
    # 100 observations: 50 in (0, 5 ms], 40 in (5, 10], 10 in (10, 25].
    buckets = [(0.005, 50), (0.01, 90), (0.025, 100), (float("inf"), 100)]
    assert slo.histogram_quantile(0.5, buckets) == pytest.approx(0.005)
    assert slo.histogram_quantile(0.7, buckets) == pytest.approx(0.0075)
    assert slo.histogram_quantile(0.99, buckets) == pytest.approx(0.01 + 0.015 * 0.9)
    assert slo.histogram_quantile(0.99, [(0.005, 0), (float("inf"), 10)]) == 0.005  # +Inf: the top finite bound
    assert slo.histogram_quantile(0.99, [(0.005, 0), (float("inf"), 0)]) is None
    assert slo.histogram_share_within(0.01, buckets) == pytest.approx(0.9)  # on a bound: exact
    assert slo.histogram_share_within(0.0175, buckets) == pytest.approx(0.95)  # inside a bucket: interpolated
    assert slo.histogram_share_within(20.0, buckets) == 1.0


def test_the_histogram_p99_stays_in_the_bucket_of_the_true_p99():
    rng = np.random.default_rng(0)
    for scale_s in (0.002, 0.008, 0.03):
        lat = rng.gamma(2.0, scale_s, size=5000)
        bounds = [*CADDY_BUCKETS_S, float("inf")]
        buckets = [(b, float((lat <= b).sum())) for b in bounds]
        est = slo.histogram_quantile(0.99, buckets)
        true = float(np.percentile(lat, 99))
        assert np.searchsorted(bounds, est) == np.searchsorted(bounds, true)


def test_front_door_latency_from_two_recorded_caddy_scrapes():
    texts = iter([(DATA / "caddy_metrics_1.txt").read_text(), (DATA / "caddy_metrics_2.txt").read_text()])
    fd = FrontDoorLatency("http://127.0.0.1:8003/metrics")
    assert fd.sample(lambda _url: next(texts), slo_ms=50) is None  # the first scrape only sets the baseline
    w = fd.sample(lambda _url: next(texts), slo_ms=50)
    _b1, n1, _ = parse_histogram((DATA / "caddy_metrics_1.txt").read_text(), fd.metric, fd.labels)
    _b2, n2, _ = parse_histogram((DATA / "caddy_metrics_2.txt").read_text(), fd.metric, fd.labels)
    assert w.requests == n2 - n1 == 501
    assert 0 < w.p99_ms <= 10 and 0 < w.mean_ms < w.p99_ms and w.within_slo == pytest.approx(1.0)
    assert fd.bucket_around(50) is None and fd.bucket_around(30) == (25.0, 50.0)


def test_the_label_matcher_selects_series_so_other_proxies_plug_in():
    text = (
        "# TYPE traefik_service_request_duration_seconds histogram\n"
        'traefik_service_request_duration_seconds_bucket{service="triton",le="0.1"} 10\n'
        'traefik_service_request_duration_seconds_bucket{service="triton",le="+Inf"} 10\n'
        'traefik_service_request_duration_seconds_sum{service="triton"} 0.5\n'
        'traefik_service_request_duration_seconds_count{service="triton"} 10\n'
        'traefik_service_request_duration_seconds_bucket{service="other",le="0.1"} 0\n'
        'traefik_service_request_duration_seconds_bucket{service="other",le="+Inf"} 99\n'
        'traefik_service_request_duration_seconds_count{service="other"} 99\n'
    )
    buckets, count, total = parse_histogram(text, "traefik_service_request_duration_seconds", {"service": "triton"})
    assert buckets == {0.1: 10, float("inf"): 10} and count == 10 and total == 0.5


def test_a_front_door_restart_gives_no_window():
    first = 'm_bucket{le="0.01"} 10\nm_bucket{le="+Inf"} 10\nm_count 10\nm_sum 0.05\n'
    second = 'm_bucket{le="0.01"} 2\nm_bucket{le="+Inf"} 2\nm_count 2\nm_sum 0.01\n'
    texts = iter(["# TYPE m histogram\n" + first, "# TYPE m histogram\n" + second])
    fd = FrontDoorLatency("u", metric="m", labels={})
    fd.sample(lambda _u: next(texts), 10)
    assert fd.sample(lambda _u: next(texts), 10) is None


# -- the fleet window -----------------------------------------------------------------------------------------------
def test_the_fleet_window_sums_counters_and_keeps_the_worst_replica():
    a = Window(0, 2, requests=100, throughput_infer_per_s=50, avg_batch=2, avg_latency_ms=4, busy_s=1.0,
               p99_latency_ms=9, pending_requests=1)  # fmt: skip
    b = Window(0, 2, requests=300, throughput_infer_per_s=150, avg_batch=1, avg_latency_ms=8, busy_s=1.5,
               p99_latency_ms=12, pending_requests=7, failures=2)  # fmt: skip
    gone = Window(0, 2, restarted=True)
    w = fleet_window({"a": a, "b": b, "c": gone}, 0, 2)
    assert (w.requests, w.failures, w.replicas) == (400, 2, 2)
    assert w.throughput_infer_per_s == 200 and w.avg_latency_ms == pytest.approx(7.0)
    assert w.avg_batch == pytest.approx(400 / (50 + 300))
    assert w.pending_requests == 7 and w.replica_pending == (("a", 1), ("b", 7))
    assert w.p99_latency_ms == 12 and w.busy_s == 2.5


def test_the_end_to_end_p99_becomes_the_slo_signal_and_triton_s_the_cross_check():
    from orchestrator.fleet import LatencyWindow

    w = with_end_to_end(Window(0, 2, requests=10, p99_latency_ms=3.0), LatencyWindow(10, 40.0, 20.0, 0.5))
    assert (w.p99_latency_ms, w.triton_p99_latency_ms, w.e2e_within_slo) == (40.0, 3.0, 0.5)
    assert with_end_to_end(Window(0, 2, p99_latency_ms=3.0), LatencyWindow(0, None, None, None)).p99_latency_ms == 3


# -- Caddy's config -------------------------------------------------------------------------------------------------
def test_caddy_config_matches_the_golden_file():
    config = caddy_config(
        (Upstream("127.0.0.1", 18100, 18101), Upstream("127.0.0.1", 18200, 18201)),
        FrontDoorSettings(http_port=8000, grpc_port=8001, metrics_port=8003, admin_port=2019),
    )
    assert config == json.loads((GOLDEN / "caddy_two_replicas.json").read_text())


def test_caddy_config_refuses_the_repository_api_first_and_binds_admin_locally():
    config = caddy_config((Upstream("10.0.0.1", 8000, 8001),), FrontDoorSettings(host="0.0.0.0"))
    assert config["admin"]["listen"].startswith("127.0.0.1:")
    grpc = config["apps"]["http"]["servers"]["grpc"]
    refused = grpc["routes"][0]["match"][0]["path"]
    assert {f"/inference.GRPCInferenceService/{m}" for m in ("RepositoryModelLoad", "RepositoryIndex")} <= set(refused)
    assert len(refused) == len(REFUSED_GRPC_METHODS) and grpc["routes"][0]["terminal"]
    http = config["apps"]["http"]["servers"]["http"]
    assert (
        http["routes"][0]["handle"][0]["status_code"] == 403
        and "/v2/repository/*" in http["routes"][0]["match"][0]["path"]
    )
    assert http["routes"][1]["handle"][0]["load_balancing"]["selection_policy"] == {"policy": "least_conn"}


def test_caddy_config_with_dns_upstreams():
    config = caddy_config(DnsUpstreams("triton"), FrontDoorSettings())
    proxy = config["apps"]["http"]["servers"]["grpc"]["routes"][1]["handle"][0]
    assert proxy["dynamic_upstreams"] == {"source": "a", "name": "triton", "port": "8001", "refresh": "5000ms"}


@pytest.mark.parametrize(
    "settings",
    [
        FrontDoorSettings(http_port=8000, grpc_port=8000),
        FrontDoorSettings(http_port=70000),
        FrontDoorSettings(health_interval_s=0),
    ],
)
def test_bad_front_door_settings(settings):
    with pytest.raises(ConfigError):
        caddy_config((Upstream("127.0.0.1", 1, 2),), settings)
    with pytest.raises(ConfigError, match="at least one replica"):
        caddy_config((), FrontDoorSettings())


# -- the orchestrator over a fleet, on recorded metrics -------------------------------------------------------------
VARIANTS = {"fp32": VariantInfo("fp32", "cnn_fp32", 0.978, 8.0)}
DEFAULT = ServingConfig("fp32", 1, 0, False, 0, ())


def triton_text(success: int, request_us: int, p99_us: float, pending: int = 0) -> str:
    """Triton's metrics for one replica, as cumulative counters (the format of tests/data/triton_metrics_*.txt)."""
    per = request_us
    lines = [
        f'nv_inference_request_success{{model="cnn",version="1"}} {success}',
        'nv_inference_request_failure{model="cnn",version="1"} 0',
        f'nv_inference_count{{model="cnn",version="1"}} {success}',
        f'nv_inference_exec_count{{model="cnn",version="1"}} {success}',
        f'nv_inference_request_duration_us{{model="cnn",version="1"}} {success * per}',
        f'nv_inference_queue_duration_us{{model="cnn",version="1"}} {success * per // 4}',
        f'nv_inference_compute_input_duration_us{{model="cnn",version="1"}} {success * 10}',
        f'nv_inference_compute_infer_duration_us{{model="cnn",version="1"}} {success * per // 2}',
        f'nv_inference_compute_output_duration_us{{model="cnn",version="1"}} {success * 10}',
        f'nv_inference_pending_request_count{{model="cnn",version="1"}} {pending}',
        f'nv_inference_request_summary_us{{model="cnn",version="1",quantile="0.99"}} {p99_us}',
        f'nv_inference_request_summary_us{{model="cnn",version="1",quantile="0.5"}} {per}',
        "nv_cpu_utilization 0.3",
    ]
    return "\n".join(lines) + "\n"


def caddy_text(counts: dict[float, int], total_s: float) -> str:
    lab = 'code="200",handler="reverse_proxy",method="POST",server="grpc"'
    lines = ["# TYPE caddy_http_request_duration_seconds histogram"]
    cum = 0
    for le in [*CADDY_BUCKETS_S, float("inf")]:
        cum += counts.get(le, 0)
        bound = "+Inf" if le == float("inf") else repr(le)
        lines.append(f'caddy_http_request_duration_seconds_bucket{{{lab},le="{bound}"}} {cum}')
    lines.append(f"caddy_http_request_duration_seconds_sum{{{lab}}} {total_s}")
    lines.append(f"caddy_http_request_duration_seconds_count{{{lab}}} {cum}")
    return "\n".join(lines) + "\n"


class FakeClient:
    def __init__(self, log):
        self.live, self.log = DEFAULT, log

    def close(self):
        pass

    def is_ready(self, _model=None):
        return True


class FakeApplier:
    """Stands in for tritune.apply.Applier on one replica (the real one runs in tests/integration/test_fleet.py)."""

    def __init__(self, client):
        self.client = client
        self.standby = None

    def current(self):
        return None, self.client.live

    def prepare_standby(self):
        return None  # no ladder of versions behind these replicas

    def apply(self, target):
        self.client.log.append(target)
        self.client.live = target
        return ApplyResult(True, 0.1)


def fleet_orchestrator(texts: dict[str, list[str]], tmp_path, slo_ms=20.0, headroom=False):
    """An orchestrator over two replicas and a front door whose scrapes replay ``texts`` (url → successive
    bodies); the replicas' configs live in fake clients."""
    applied: list[ServingConfig] = []
    urls = {"a": "http://a/metrics", "b": "http://b/metrics"}

    def scrape(url):
        return texts[url].pop(0) if len(texts[url]) > 1 else texts[url][0]

    endpoints = tuple(ReplicaEndpoints(n, f"{n}:1", u) for n, u in urls.items())
    fleet = Fleet(StaticReplicas(endpoints), "cnn", "key", scrape=scrape, log=lambda *a, **k: None, judge_s=0.0,
                  sleep=lambda _s: None, applier_factory=lambda _r: FakeApplier(FakeClient(applied)))  # fmt: skip
    ctx = Context(objective=Objective(slo_ms), variants=VARIANTS, cores=2, headroom=headroom)
    clock = iter(range(0, 1000, 2))
    orch = Orchestrator(None, ctx, LoopOptions(decision_log=tmp_path / "d.jsonl"), clock=lambda: next(clock),
                        fleet=fleet, front_door=FrontDoorLatency("http://door/metrics"))  # fmt: skip
    fleet.log = orch.log
    return orch, applied, scrape


def test_the_blind_spot_triton_within_the_slo_clients_not_the_controller_acts(tmp_path, monkeypatch):
    """Triton's own p99 is 4 ms against a 20-ms SLO; through the front door clients see 30-40 ms (they wait
    outside Triton). Reading Triton alone, nothing would happen; with the front door the controller acts."""
    n = 100  # requests per replica per 2-s window
    texts = {
        "http://a/metrics": [triton_text(n * i, 2000, 4000) for i in range(1, 12)],
        "http://b/metrics": [triton_text(n * i, 2000, 4000) for i in range(1, 12)],
        "http://door/metrics": [caddy_text({0.025: 150 * i, 0.05: 50 * i}, 6.0 * i) for i in range(1, 12)],
    }
    orch, applied, scrape = fleet_orchestrator(texts, tmp_path)
    import orchestrator.loop as loop

    monkeypatch.setattr(loop, "scrape", scrape)
    decisions = [orch.tick() for _ in range(10)]
    acted = [d for d in decisions if d is not None and d.action == Action.APPLY]
    assert acted, [d.reason for d in decisions if d]
    assert "p99" in acted[0].reason
    action = next(r for r in orch.history if r["event"] == "action")
    assert action["window"]["triton_p99_latency_ms"] == 4.0 and action["window"]["e2e_p99_latency_ms"] > 20
    assert applied[:2] == [acted[0].config] * 2  # rolled over both replicas, one at a time
    assert [r["replica"] for r in orch.history if r["event"] == "replica-apply"][-2:] == ["a", "b"]


def test_without_the_front_door_the_same_windows_look_fine(tmp_path, monkeypatch):
    n = 100
    texts = {
        "http://a/metrics": [triton_text(n * i, 2000, 4000) for i in range(1, 12)],
        "http://b/metrics": [triton_text(n * i, 2000, 4000) for i in range(1, 12)],
        "http://door/metrics": [caddy_text({0.025: 150 * i, 0.05: 50 * i}, 6.0 * i) for i in range(1, 12)],
    }
    orch, _applied, scrape = fleet_orchestrator(texts, tmp_path)
    orch.front_door = None
    import orchestrator.loop as loop

    monkeypatch.setattr(loop, "scrape", scrape)
    decisions = [orch.tick() for _ in range(10)]
    assert not [d for d in decisions if d is not None and d.action == Action.APPLY]


def test_a_replica_that_restarts_drops_out_and_gets_the_fleet_config_back(tmp_path, monkeypatch):
    n = 50
    a = [triton_text(n * i, 1000, 2000) for i in range(1, 12)]
    b = [triton_text(n * i, 1000, 2000) for i in range(1, 5)] + [triton_text(n * i, 1000, 2000) for i in range(1, 8)]
    door = [caddy_text({0.005: 2 * n * i}, 0.2 * i) for i in range(1, 12)]
    texts = {"http://a/metrics": a, "http://b/metrics": b, "http://door/metrics": door}
    orch, _applied, scrape = fleet_orchestrator(texts, tmp_path, slo_ms=50.0)
    import orchestrator.loop as loop

    monkeypatch.setattr(loop, "scrape", scrape)
    for _ in range(3):  # scrapes 0-2
        orch.tick()
    fleet = orch.fleet
    tuned = ServingConfig("fp32", 2, 1, True, 500, ())
    fleet.config = orch.current = tuned  # as if the controller had rolled it out
    for r in fleet.replicas.values():
        r.applier.client.live = tuned
    orch.tick()  # scrape 3
    fleet.replicas["b"].applier.client.live = DEFAULT  # b restarts with the repository's config
    orch.tick()  # scrape 4: b's counters went back
    events = [(r["event"], r.get("replica")) for r in orch.history]
    assert ("replica-restarted", "b") in events and ("replica-apply", "b") in events
    assert fleet.replicas["b"].applier.client.live == tuned  # within the tick that saw it
    assert orch.metrics.replicas._value.get() == 1  # b is out of that window, and the fleet did not "restart"
    assert not any(r["window"]["restarted"] for r in orch.history if "window" in r)
    orch.tick()
    orch.tick()
    assert orch.metrics.replicas._value.get() == 2
    assert orch.state.restarts == 0


def test_a_missing_caddy_says_how_to_install_it(monkeypatch, tmp_path):
    from tritune.errors import ServerError
    from tritune.frontdoor import find_caddy

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerError, match="apt-get install caddy") as err:
        find_caddy()
    assert "\n" not in str(err.value)
    with pytest.raises(ServerError, match="not an executable caddy"):
        find_caddy(tmp_path / "caddy")
