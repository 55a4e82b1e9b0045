"""deploy/k8s/, validated offline: core kinds against Kubernetes' own schemas (kubernetes-validate, strict), CRDs
against their published schemas (tests/data/crds/, where vendored) and structure tests for what no schema checks.
No cluster runs here (docs/kubernetes.md)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CRDS = ROOT / "tests" / "data" / "crds"
CORE_GROUPS = {"v1", "apps/v1", "batch/v1", "autoscaling/v2", "networking.k8s.io/v1"}
KUBERNETES = kubernetes_validate.latest_version()


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.name == "prometheus-adapter-rules.yaml":
            continue
        if path.parent.name == "cpu":  # strategic-merge patches, checked through the merge below
            continue
        out += [(path, d) for d in documents(path)]
    return out


def by_kind(kind: str, name: str | None = None) -> list[dict]:
    return [d for _, d in manifests() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def env() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            values[k.strip()] = v.strip()
    return values


# -- schemas --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "doc"),
    [(p, d) for p, d in manifests() if d["apiVersion"] in CORE_GROUPS],
    ids=lambda x: x.name if isinstance(x, Path) else f"{x['kind']}/{x['metadata']['name']}",
)
def test_core_kinds_validate_against_kubernetes_schemas(path, doc):
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_every_manifest_is_a_core_kind_or_a_crd_checked_here():
    kinds = {(d["apiVersion"], d["kind"]) for _, d in manifests()}
    crds = {("traefik.io/v1alpha1", k) for k in ("Middleware", "TraefikService", "IngressRoute")}
    crds |= {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject")}
    unknown = {k for k in kinds if k[0] not in CORE_GROUPS} - crds
    assert not unknown, f"kinds neither core nor a checked CRD: {unknown}"
    for api, kind in kinds - crds:  # a core kind kubernetes-validate does not know would only WARN: fail instead
        try:
            kubernetes_validate.validate({"apiVersion": api, "kind": kind, "metadata": {"name": "x"}}, KUBERNETES)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{api} {kind} has no schema in Kubernetes {KUBERNETES}")
        except kubernetes_validate.ValidationError:
            pass


def _strict(schema):
    """The schema with unknown fields refused wherever it lists its fields: a CRD schema leaves
    additionalProperties open, so a misspelt field would pass (and Kubernetes would silently drop it)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _crd_schema(doc: dict) -> dict | None:
    group, version = doc["apiVersion"].split("/")
    path = CRDS / f"{group}_{version}_{doc['kind'].lower()}.json"
    return _strict(json.loads(path.read_text())["schema"]) if path.exists() else None


@pytest.mark.parametrize(
    "doc",
    [d for _, d in manifests() if d["apiVersion"] not in CORE_GROUPS],
    ids=lambda d: f"{d['kind']}/{d['metadata']['name']}",
)
def test_crds_validate_against_their_published_schemas(doc):
    import jsonschema

    schema = _crd_schema(doc)
    assert schema is not None, f"no vendored schema for {doc['apiVersion']} {doc['kind']} in {CRDS}"
    jsonschema.Draft7Validator(schema).validate(doc)


# -- who owns which knob ----------------------------------------------------------------------------------------------
def test_the_hpa_owns_the_replica_count_and_no_manifest_sets_it():
    (hpa,) = by_kind("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    (deployment,) = by_kind(target["kind"], target["name"])
    assert "replicas" not in deployment["spec"]
    for path in K8S.rglob("*.yaml"):
        assert "/spec/replicas" not in path.read_text(), path  # no overlay patches it in
    (metric,) = hpa["spec"]["metrics"]
    assert metric["object"]["metric"]["name"] == "tritune_fleet_replicas_needed"
    assert metric["object"]["target"] == {"type": "AverageValue", "averageValue": "1"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    (orchestrator,) = by_kind("Deployment", "orchestrator")
    assert orchestrator["spec"]["replicas"] == 1 and orchestrator["spec"]["strategy"]["type"] == "Recreate"


def test_the_capacity_signal_is_what_the_orchestrator_exports():
    from prometheus_client import CollectorRegistry

    from orchestrator.loop import OrchestratorMetrics

    registry = CollectorRegistry()
    OrchestratorMetrics(registry)
    names = {f.name for f in registry.collect()}
    assert {"tritune_fleet_capacity_ratio", "tritune_fleet_replicas_needed"} <= names
    (rule,) = yaml.safe_load((K8S / "base" / "prometheus-adapter-rules.yaml").read_text())["rules"]["custom"]
    for name in ("tritune_fleet_capacity_ratio", "tritune_fleet_replicas_needed"):
        assert re.fullmatch(rule["name"]["matches"], name) and re.search(rule["seriesQuery"].split('"')[1], name), name
    (scaled,) = by_kind("ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert "tritune_fleet_replicas_needed" in trigger["metadata"]["query"]
    assert trigger["metricType"] == "AverageValue"


# -- the pods -------------------------------------------------------------------------------------------------------
def pod_specs() -> list[tuple[str, dict]]:
    out = []
    for kind in ("Deployment", "Job"):
        for d in by_kind(kind):
            out.append((d["metadata"]["name"], d["spec"]["template"]["spec"]))
    return out


def test_probes_are_on_the_right_ports():
    (triton,) = by_kind("Deployment", "triton")
    (c,) = triton["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    for probe, path in (("startupProbe", "/v2/models/cnn/ready"), ("readinessProbe", "/v2/models/cnn/ready"),
                        ("livenessProbe", "/v2/health/live")):  # fmt: skip
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    (svc,) = by_kind("Service", "triton")
    assert svc["spec"]["clusterIP"] == "None"
    assert {p["port"]: p["targetPort"] for p in svc["spec"]["ports"]} == {8000: "http", 8001: "grpc", 8002: "metrics"}
    (orch,) = by_kind("Deployment", "orchestrator")
    oc = orch["spec"]["template"]["spec"]["containers"][0]
    assert oc["readinessProbe"]["tcpSocket"]["port"] == "metrics" and oc["ports"][0]["containerPort"] == 9100


def test_every_pod_runs_as_non_root_with_a_read_only_root_and_no_token():
    for name, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "limits" in c["resources"] and "requests" in c["resources"], name


def test_the_admin_key_reaches_only_triton_and_the_orchestrator():
    holders = set()
    for path in K8S.rglob("*.yaml"):
        for doc in documents(path):
            text = json.dumps(doc)
            if "tritune-admin-key" in text:
                holders.add(doc["metadata"]["name"])
            assert doc.get("kind") not in ("Secret", "ConfigMap"), f"{path}: the key never lives in a manifest"
    assert holders == {"triton", "orchestrator"}
    for name, spec in pod_specs():
        for c in spec["containers"]:
            refs = [e for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
            if name in ("triton", "orchestrator"):
                assert [e["valueFrom"]["secretKeyRef"]["name"] for e in refs] == ["tritune-admin-key"], name
            else:
                assert not refs, name
        assert not any("secret" in v for v in spec.get("volumes", [])), name  # not mounted as a file anywhere


def test_image_tags_are_the_ones_pinned_in_dot_env():
    e = env()
    (triton,) = by_kind("Deployment", "triton")
    assert triton["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"nvcr.io/nvidia/tritonserver:{e['TRITON_IMAGE_TAG']}-py3"
    )
    (job,) = by_kind("Job", "tritune-builder")
    builder = job["spec"]["template"]["spec"]["containers"][0]
    assert builder["image"] == f"tritune/gpu-builder:{e['TRITON_IMAGE_TAG']}"
    tensorrt = {x["name"]: x["value"] for x in builder["env"]}["TRITUNE_SERVING_TENSORRT_VERSION"]
    assert tensorrt == e["TRITON_TENSORRT_VERSION"]
    gpu = yaml.safe_load((K8S / "gpu" / "kustomization.yaml").read_text())
    assert {i["name"]: i["newTag"] for i in gpu["images"]}["tritune/gpu-builder"] == e["TRITON_IMAGE_TAG"]


def test_the_gpu_replicas_take_one_gpu_and_shared_memory_from_ram():
    (triton,) = by_kind("Deployment", "triton")
    spec = triton["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 == c["resources"]["requests"]["nvidia.com/gpu"]
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
    assert {m["name"]: m["mountPath"] for m in c["volumeMounts"]}["dshm"] == "/dev/shm"
    args = c["args"][0]
    assert "--http-restricted-api=model-repository:admin-key=$(TRITUNE_ADMIN_KEY)" in args
    assert "--grpc-restricted-protocol=model-repository:admin-key=$(TRITUNE_ADMIN_KEY)" in args
    assert "--model-control-mode=explicit" in args


# -- the front door ---------------------------------------------------------------------------------------------------
def _prefixes(match: str) -> list[str]:
    return re.findall(r"PathPrefix\(`([^`]+)`\)", match)


def test_the_repository_api_is_refused_at_the_front_door_on_both_protocols():
    from tritune.frontdoor import GRPC_SERVICE, REFUSED_GRPC_METHODS, REFUSED_HTTP_PATHS

    (mw,) = by_kind("Middleware", "refuse-admin-api")
    assert mw["spec"]["ipAllowList"]["sourceRange"] == ["255.255.255.255/32"]  # no client: every request is 403
    routes = {d["metadata"]["name"]: d["spec"] for d in by_kind("IngressRoute")}

    def refused_and_open(spec):
        refused = [r for r in spec["routes"] if {"name": "refuse-admin-api"} in r.get("middlewares", [])]
        opened = [r for r in spec["routes"] if not r.get("middlewares")]
        assert len(refused) == 1 and opened
        assert all(refused[0]["priority"] > r["priority"] for r in opened)  # matched first
        return refused[0]

    grpc = refused_and_open(routes["triton-grpc"])
    for method in REFUSED_GRPC_METHODS:
        path = f"/{GRPC_SERVICE}/{method}"
        assert any(path.startswith(p) for p in _prefixes(grpc["match"])), method
    assert routes["triton-grpc"]["entryPoints"] == ["grpc"]
    http = refused_and_open(routes["triton-http"])
    for path in REFUSED_HTTP_PATHS:
        plain = path.rstrip("*").rstrip("/")
        covered = any(plain.startswith(p) for p in _prefixes(http["match"]))
        covered |= "trace" in plain and "PathRegexp(`^/v2/models/[^/]+/trace`)" in http["match"]
        assert covered, path
    services = {d["metadata"]["name"]: d["spec"]["weighted"]["services"] for d in by_kind("TraefikService")}
    assert services["triton-grpc"] == [{"name": "triton", "port": 8001, "scheme": "h2c"}]
    assert services["triton-http"] == [{"name": "triton", "port": 8000}]


def test_only_the_orchestrator_reaches_every_replica_port():
    (policy,) = by_kind("NetworkPolicy", "triton-ingress")
    rules = policy["spec"]["ingress"]

    def ports(rule):
        return sorted(p["port"] for p in rule["ports"])

    peers = {json.dumps(r["from"], sort_keys=True): ports(r) for r in rules}
    full = [p for p, ps in peers.items() if ps == [8000, 8001, 8002]]
    assert len(full) == 1 and "orchestrator" in full[0]
    assert any("traefik" in p and ps == [8000, 8001] for p, ps in peers.items())
    assert any("monitoring" in p and ps == [8002] for p, ps in peers.items())


def test_the_orchestrator_command_parses_and_points_at_the_fleet_and_the_front_door():
    from orchestrator.cli import OrchestrateOptions, add_arguments, parse_labels
    from tritune.settings import options_from_args

    (orch,) = by_kind("Deployment", "orchestrator")
    args = orch["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["tritune", "orchestrate"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    opts = options_from_args(OrchestrateOptions, parser.parse_args(args[2:]))
    assert opts.replicas_dns == "triton.tritune.svc.cluster.local" and (opts.dns_grpc_port, opts.dns_metrics_port) == (
        8001,
        8002,
    )
    (grpc_service,) = by_kind("TraefikService", "triton-grpc")
    namespace = grpc_service["metadata"]["namespace"]
    assert parse_labels(opts.latency_labels) == {"service": f"{namespace}-triton-grpc@kubernetescrd"}
    assert opts.latency_metric == "traefik_service_request_duration_seconds"


# -- kustomize --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", ["base", "gpu", "cpu", "keda"])
def test_kustomizations_list_files_that_exist(overlay):
    k = yaml.safe_load((K8S / overlay / "kustomization.yaml").read_text())
    for res in k.get("resources", []):
        assert (K8S / overlay / res).exists(), res
    for patch in k.get("patches", []):
        if "path" in patch:
            assert (K8S / overlay / patch["path"]).exists(), patch["path"]
    if overlay == "base":
        listed = set(k["resources"])
        here = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml", "prometheus-adapter-rules.yaml"}
        assert listed == here


def test_the_cpu_overlay_patches_the_args_it_means_to():
    (orch,) = by_kind("Deployment", "orchestrator")
    args = orch["spec"]["template"]["spec"]["containers"][0]["args"]
    k = yaml.safe_load((K8S / "cpu" / "kustomization.yaml").read_text())
    (inline,) = [p for p in k["patches"] if p["target"]["name"] == "orchestrator"]
    for op in yaml.safe_load(inline["patch"]):
        index = int(op["path"].rsplit("/", 1)[1])
        assert args[index].split("=")[0] in ("--kind", "--gpu-memory-per-instance-mb"), (index, args[index])


def test_a_misspelt_crd_field_is_refused():
    import jsonschema

    (scaled,) = by_kind("ScaledObject")
    bad = json.loads(json.dumps(scaled))
    bad["spec"]["minReplicaCont"] = bad["spec"].pop("minReplicaCount")
    with pytest.raises(jsonschema.ValidationError, match="minReplicaCont"):
        jsonschema.Draft7Validator(_crd_schema(bad)).validate(bad)
