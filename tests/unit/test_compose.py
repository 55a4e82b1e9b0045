"""docker-compose.yml without a Docker engine: the compose-spec schema (check-jsonschema), then what the schema
cannot know: GPU reservations, health checks and start order, what is published and what stays restricted, image
pins from one place, and a Grafana dashboard that asks only for metrics that exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from orchestrator.loop import OrchestratorMetrics
from tritune.server import ADMIN_HEADER, ServerOptions, TritonServer

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_FILE = ROOT / ".env"
DOCKER = ROOT / "docker"
GPU_SERVICES = {"builder", "triton", "orchestrator"}
CPU_SERVICES = {"builder-cpu", "triton-cpu", "orchestrator-cpu"}
SHARED_SERVICES = {"frontdoor", "locust", "locust-worker", "prometheus", "grafana"}
TRITONS = ("triton", "triton-cpu")
_VAR = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def read_env(path: Path = ENV_FILE) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}; ``$$`` stays for the container's shell."""

    def one(m: re.Match) -> str:
        name, op, arg = m.groups()
        if env.get(name):
            return env[name]
        if op == "?":
            raise AssertionError(f"{name} is unset: {arg}")
        return arg or ""

    parts = text.split("$$")
    return "$$".join(_VAR.sub(one, p) for p in parts)


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return read_env()


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def command_text(service: dict) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else cmd


def test_valid_against_the_compose_spec():
    # A dev dependency, installed beside this interpreter: `make test` does not put the venv's bin on PATH, and a
    # missing one is a broken install, not a reason to skip.
    exe = Path(sys.executable).parent / "check-jsonschema"
    assert exe.is_file(), f"{exe} is missing: pip install -e '.[dev]'"
    result = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_profiles_give_one_stack_per_machine_kind(services):
    assert set(services) == GPU_SERVICES | CPU_SERVICES | SHARED_SERVICES
    for name in GPU_SERVICES:
        assert services[name]["profiles"] == ["gpu"], name
    for name in CPU_SERVICES:
        assert services[name]["profiles"] == ["cpu"], name
    for name in SHARED_SERVICES:
        assert sorted(services[name]["profiles"]) == ["cpu", "gpu"], name
    # the cpu profile answers to the same names, so clients and Prometheus need no profile of their own
    assert "triton" in services["triton-cpu"]["networks"]["default"]["aliases"]
    assert "orchestrator" in services["orchestrator-cpu"]["networks"]["default"]["aliases"]


def test_gpu_services_reserve_an_nvidia_gpu_with_capabilities(services):
    for name in ("builder", "triton", "orchestrator"):
        [device] = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["count"] == 1 and "gpu" in device["capabilities"], name
    for name in CPU_SERVICES | SHARED_SERVICES:
        assert "deploy" not in services[name], f"{name} must run without a GPU"


def test_triton_runtime_settings(services):
    gpu = services["triton"]
    assert gpu["ulimits"] == {"memlock": -1, "stack": 67108864} and gpu["shm_size"]
    cmd = command_text(gpu)
    assert "--model-control-mode=explicit" in cmd and "--model-repository=/srv/tritune/model_repository" in cmd
    assert services["triton-cpu"]["shm_size"]


def test_healthchecks_and_start_order(services):
    for name in TRITONS:
        test = " ".join(services[name]["healthcheck"]["test"])
        assert "/v2/health/ready" in test and "127.0.0.1:8000" in test, name
    assert services["triton"]["depends_on"] == {"builder": {"condition": "service_completed_successfully"}}
    assert services["triton-cpu"]["depends_on"] == {"builder-cpu": {"condition": "service_completed_successfully"}}
    assert services["orchestrator"]["depends_on"] == {"triton": {"condition": "service_healthy"}}
    assert services["orchestrator-cpu"]["depends_on"] == {"triton-cpu": {"condition": "service_healthy"}}
    assert services["locust-worker"]["depends_on"]["locust"]["condition"] == "service_started"


def _published(service: dict, env: dict[str, str]) -> list[tuple[str, str, str]]:
    return [tuple(interpolate(p, env).rsplit(":", 2)) for p in service.get("ports", [])]


def test_only_the_front_door_publishes_inference_on_localhost_and_the_replicas_scale(services, env):
    for name in TRITONS:
        # Scaled with --scale triton=N: no published port (N containers cannot share one) and no container_name.
        assert "ports" not in services[name] and "container_name" not in services[name], name
        assert services[name]["expose"] == ["8000", "8001", "8002"], name
    door = services["frontdoor"]
    assert sorted(container for _, _, container in _published(door, env)) == ["8000", "8001"]
    assert door["expose"] == ["8003"] and set(door["profiles"]) == {"gpu", "cpu"}
    for name, service in services.items():
        for address, _, _ in _published(service, env):
            assert address == "127.0.0.1", f"{name} publishes on {address}"
        for port in service.get("ports", []):
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), f"{name}: {port} must default to localhost"
    # the orchestrator's own metrics stay inside the network
    for name in ("orchestrator", "orchestrator-cpu"):
        assert "ports" not in services[name] and services[name]["expose"] == ["9100"]
    assert "ports" not in services["locust-worker"] and "container_name" not in services["locust-worker"]


def test_admin_api_is_restricted_by_the_key_on_both_protocols(services):
    cmd = command_text(services["triton"])
    key = "$${TRITUNE_ADMIN_KEY"
    assert f"--http-restricted-api=model-repository:{ADMIN_HEADER}={key}" in cmd
    assert f"--grpc-restricted-protocol=model-repository:{ADMIN_HEADER}={key}" in cmd
    # the cpu profile's `tritune serve` adds the same flags from $TRITUNE_ADMIN_KEY
    assert "tritune serve" in command_text(services["triton-cpu"])
    served = TritonServer(ServerOptions(admin_key="k")).command(Path("tritonserver"), Path("backends"))
    assert f"--http-restricted-api=model-repository:{ADMIN_HEADER}=k" in served
    assert f"--grpc-restricted-protocol=model-repository:{ADMIN_HEADER}=k" in served


def test_the_key_reaches_only_triton_and_the_orchestrator(services):
    holders = {name for name, s in services.items() if "docker/secrets.env" in s.get("env_file", [])}
    assert holders == {"triton", "triton-cpu", "orchestrator", "orchestrator-cpu"}
    # never a value in the file (KEY=value or KEY: value); the commands leave "$${TRITUNE_ADMIN_KEY}" to the shell
    text = COMPOSE.read_text()
    assert re.search(r"TRITUNE_ADMIN_KEY(=|: )", text) is None
    assert "${TRITUNE_ADMIN_KEY" not in text.replace("$${TRITUNE_ADMIN_KEY", "")
    assert all("TRITUNE_ADMIN_KEY" not in s.get("environment", {}) for s in services.values())
    example = read_env(DOCKER / "secrets.env.example")
    assert example == {"TRITUNE_ADMIN_KEY": ""}
    assert "docker/secrets.env" in (ROOT / ".dockerignore").read_text()


def test_images_are_pinned_in_one_place(services, env):
    text = COMPOSE.read_text()
    for var in re.findall(r"\$\{(\w+(?:_TAG|_VERSION))", text):
        assert var in env, f"{var} is not pinned in .env"
        assert f"${{{var}:-" not in text, f"{var} must have no fallback version outside .env"
    for name, service in services.items():
        image = interpolate(service["image"], env)
        repo, _, tag = image.rpartition(":")
        assert repo and tag and "latest" not in tag, f"{name}: {image} is not pinned"
    for dockerfile in DOCKER.glob("Dockerfile*"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("ARG ") and line.split()[1].endswith(("_TAG", "_VERSION")):
                assert "=" not in line, f"{dockerfile.name}: {line} duplicates a version pinned in .env"


def test_builder_and_triton_share_one_ngc_release(services, env):
    assert re.fullmatch(r"\d{2}\.\d{2}", env["TRITON_IMAGE_TAG"])
    image = "nvcr.io/nvidia/tritonserver:${TRITON_IMAGE_TAG:?set it in .env}-${TRITON_IMAGE_FLAVOUR:?set it in .env}"
    assert services["triton"]["image"] == image and env["TRITON_IMAGE_FLAVOUR"] == "py3"
    assert services["builder"]["build"]["args"]["TRITON_IMAGE_TAG"].startswith("${TRITON_IMAGE_TAG")
    assert "FROM nvcr.io/nvidia/pytorch:${TRITON_IMAGE_TAG}-py3" in (DOCKER / "Dockerfile.gpu-builder").read_text()
    builder = services["builder"]
    assert "tritune build --target gpu" in command_text(builder)
    assert "python -m builders.check_plans" in command_text(builder)  # the plans' TensorRT vs the serving one
    assert builder["environment"]["TRITUNE_SERVING_TENSORRT_VERSION"].startswith("${TRITON_TENSORRT_VERSION")
    # the plan check knows the flavour: -trtllm-python-py3 of the same YY.MM may carry another TensorRT
    assert builder["environment"]["TRITUNE_SERVING_IMAGE"] == services["triton"]["image"]


def test_cpu_image_uses_the_cpu_torch_wheel(env):
    dockerfile = (DOCKER / "Dockerfile.cpu").read_text()
    assert "FROM python:${PYTHON_IMAGE_TAG}" in dockerfile and env["PYTHON_IMAGE_TAG"].startswith("3.11-slim")
    assert '"torch==${TORCH_CPU_VERSION}" --index-url https://download.pytorch.org/whl/cpu' in dockerfile
    assert "USER tritune" in dockerfile


def test_locust_master_and_scalable_workers(services):
    master, worker = command_text(services["locust"]), command_text(services["locust-worker"])
    assert "-f loadtest/locustfile.py" in master and "--master" in master
    assert "--host=http://frontdoor:8000" in master and "--grpc-url=frontdoor:8001" in master
    assert "--grpc-url=frontdoor:8001" in worker
    assert "--worker" in worker and "--master-host=locust" in worker


def test_orchestrator_commands(services):
    for name, kind in (("orchestrator", "gpu"), ("orchestrator-cpu", "cpu")):
        cmd = command_text(services[name])
        assert cmd.startswith("tritune orchestrate") and f"--kind={kind}" in cmd
        assert "--replicas-dns=triton" in cmd and "--dns-grpc-port=8001" in cmd and "--dns-metrics-port=8002" in cmd
        assert "--front-door-metrics-url=http://frontdoor:8003/metrics" in cmd
        assert "--metrics-host=0.0.0.0" in cmd and "--metrics-port=9100" in cmd
    # every option given exists in the orchestrator's parser
    import argparse

    from orchestrator.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parser.parse_args(services["orchestrator"]["command"][2:])


def test_prometheus_scrapes_every_replica_the_front_door_and_the_orchestrator():
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["triton"]["dns_sd_configs"] == [
        {"names": ["triton"], "type": "A", "port": 8002, "refresh_interval": "5s"}
    ]
    targets = {t for job in jobs.values() for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert targets == {"frontdoor:8003", "orchestrator:9100"}


def test_the_front_door_config_is_what_the_code_writes_and_caddy_accepts_it(services):
    from tritune.frontdoor import compose_config

    path = DOCKER / "caddy" / "frontdoor.json"
    assert json.loads(path.read_text()) == compose_config(), "regenerate: python -m tritune.frontdoor > " + str(path)
    assert "./docker/caddy/frontdoor.json:/etc/caddy/frontdoor.json:ro" in services["frontdoor"]["volumes"]
    caddy = shutil.which("caddy")
    assert caddy, "Caddy is part of the test set-up: `make install` (or `apt-get install caddy`)"
    proc = subprocess.run([caddy, "validate", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Valid configuration" in proc.stdout + proc.stderr, proc.stderr[-500:]


# -- Grafana -----------------------------------------------------------------------------------------------------------
def _dashboard() -> dict:
    return json.loads((DOCKER / "grafana" / "dashboards" / "tritune.json").read_text())


def _known_metrics() -> set[str]:
    # Triton: names from real scrapes, plus the GPU metrics the orchestrator's parser reads.
    known = set()
    for capture in (ROOT / "tests" / "data").glob("triton_metrics_*.txt"):
        known |= set(re.findall(r"^(nv_\w+)", capture.read_text(), re.M))
    known |= set(re.findall(r'"(nv_gpu_\w+)"', (ROOT / "orchestrator" / "metrics.py").read_text()))
    # The orchestrator: what its registry exports; labelled metrics have no samples before first use, so names
    # come from the families (a counter is exported with the _total suffix).
    registry = CollectorRegistry()
    OrchestratorMetrics(registry)
    known |= {f.name + "_total" if f.type == "counter" else f.name for f in registry.collect()}
    # The front door: names from real Caddy scrapes.
    for capture in (ROOT / "tests" / "data").glob("caddy_metrics_*.txt"):
        known |= set(re.findall(r"^(caddy_\w+)", capture.read_text(), re.M))
    return known


def test_dashboard_parses_and_covers_the_stack():
    dash = _dashboard()
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("throughput", "p99", "queue", "batch", "instances", "variant", "gpu utilization", "gpu memory",
                  "actions"):  # fmt: skip
        assert topic in titles, topic
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "prometheus" and panel["targets"], panel["title"]


def test_dashboard_asks_only_for_metrics_that_exist():
    known = _known_metrics()
    exprs = [t["expr"] for p in _dashboard()["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:nv|tritune|caddy)_\w+)", e)}
    assert used - known == set()
    for required in ("nv_inference_request_success", "nv_inference_queue_duration_us", "nv_inference_count",
                     "nv_inference_exec_count", "nv_inference_request_summary_us", "nv_gpu_utilization",
                     "nv_gpu_memory_used_bytes", "tritune_config_instances", "tritune_actions_total",
                     "caddy_http_request_duration_seconds_bucket"):  # fmt: skip
        assert required in used, required


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard(services):
    ds = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [source] = ds["datasources"]
    assert (source["uid"], source["url"]) == ("prometheus", "http://prometheus:9090")
    boards = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "dashboards" / "tritune.yml").read_text())
    path = boards["providers"][0]["options"]["path"]
    assert f"./docker/grafana/dashboards:{path}:ro" in services["grafana"]["volumes"]


def test_every_image_that_installs_tritune_copies_every_package():
    """`pip install .` in an image succeeds without a package folder and the console command then fails at run
    time: every package pyproject.toml lists must be copied in."""
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [p.rstrip("*") for p in include]
    for dockerfile in DOCKER.glob("Dockerfile*"):
        text = dockerfile.read_text()
        if "pip install" in text and "COPY pyproject.toml" in text:
            missing = [p for p in packages if f"COPY {p} ./{p}" not in text]
            assert not missing, f"{dockerfile.name} does not copy {missing}"


# What nvcr.io/nvidia/pytorch:25.06-py3 ships. Since 25.03 its /etc/pip/constraint.txt (PIP_CONSTRAINT) pins every
# bundled package (PyTorch release notes), so `pip install '.[gpu]'` must accept these versions as they are. NVIDIA's
# 25.06 page was not reachable from here: the versions come from the Triton compatibility table (TensorRT, torch of
# the same build) and from users' reports of that image (numpy, nvidia-ml-py's pin); docs/deploy.md says how to check.
NGC_PYTORCH_IMAGE = {
    "25.06": {
        "python": "3.12.3",
        "numpy": "1.26.4",
        "torch": "2.8.0a0+5228986c39.nv25.6",
        "tensorrt": "10.11.0.33",
        "nvidia-ml-py": "12.575.51",
    }
}


def test_the_gpu_builders_requirements_fit_the_ngc_pytorch_images_pins(env):
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    assert env["TRITON_IMAGE_TAG"] in NGC_PYTORCH_IMAGE, "record the new image's bundled versions above"
    bundled = NGC_PYTORCH_IMAGE[env["TRITON_IMAGE_TAG"]]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = [Requirement(r) for r in (*project["dependencies"], *project["optional-dependencies"]["gpu"])]
    assert Version(bundled["python"]) in Requirement(f"python{project['requires-python']}").specifier
    checked = 0
    for req in installed:
        if req.name in bundled:  # a pinned == prerelease (torch's nv build) is what the constraint allows
            assert req.specifier.contains(bundled[req.name], prereleases=True), f"{req} refuses the image's pin"
            checked += 1
    assert checked == 4
    # the CPU stack (a tritonserver binary, Locust and its gevent) stays out of the GPU builder image
    assert not {r.name for r in installed} & {"nvidia-pytriton", "locust", "gevent", "matplotlib"}
    installs = [line for line in (DOCKER / "Dockerfile.gpu-builder").read_text().splitlines() if "pip install" in line]
    assert installs and all("'.[gpu]'" in line and "serve" not in line for line in installs)
