"""A real tritonserver (nvidia-pytriton wheel) serving the built repository over HTTP and gRPC."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from builders import onnx_utils as ox
from tests.integration.conftest import ADMIN_KEY, start_server
from tritune.apply import Applier
from tritune.client import InferenceClient, served_variant, variant_versions
from tritune.errors import AdminError, InferenceError, ModelNotFoundError, ServerUnavailableError

VARIANT_MODELS = ["cnn_fp32", "cnn_pruned", "cnn_distilled", "cnn_fp16", "cnn_int8"]


def clients(server):
    return {
        "http": InferenceClient(server.http_url, "http", admin_key=ADMIN_KEY),
        "grpc": InferenceClient(server.grpc_url, "grpc", admin_key=ADMIN_KEY),
    }


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", [*VARIANT_MODELS, "cnn"])
def test_served_top1_matches_in_process_onnxruntime(server, quick_repository, held_out, protocol, model):
    x, y = held_out[0][:128], held_out[1][:128]
    # the public model's variants are its versions, numbered by accuracy: the one it serves is the manifest's
    manifest = json.loads((quick_repository / "manifest.json").read_text())
    version = manifest["public_versions"][manifest["public_variant"]] if model == "cnn" else 1
    reference = ox.run_onnx(ox.session(quick_repository / model / str(version) / "model.onnx"), x)
    with clients(server)[protocol] as client:
        served = np.concatenate([client.infer(model, x[i : i + 32]) for i in range(0, len(x), 32)])
    np.testing.assert_allclose(served, reference, rtol=1e-5, atol=1e-5)
    assert (served.argmax(1) == y).mean() == (reference.argmax(1) == y).mean()


def _still_serves(server, held_out):
    with InferenceClient(server.http_url) as client:
        assert client.infer("cnn", held_out[0][:2]).shape == (2, 10)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_get_clear_errors_and_serving_goes_on(server, held_out, protocol):
    x = held_out[0][:4]
    client = clients(server)[protocol]
    cases = [
        (lambda: client.infer("no_such_model", x), ModelNotFoundError, "no_such_model"),
        (lambda: client.infer("cnn", x[:, :, :16]), InferenceError, "unexpected shape"),
        (lambda: client.infer("cnn", x.astype(np.float64)), InferenceError, "FP64"),
        (
            lambda: client.infer("cnn", np.zeros((65, 3, 32, 32), np.float32)),
            InferenceError,
            "batch-size must be <= 64",
        ),
        (lambda: client.infer("cnn", x, input_name="pixels"), InferenceError, "pixels"),
    ]
    for call, error, text in cases:
        with pytest.raises(error, match=text):
            call()
        _still_serves(server, held_out)
    # Values are not checked, as in every Triton backend (perf_analyzer's default random data holds NaN and inf):
    # a NaN image is computed on, and its answer says so.
    assert np.isnan(client.infer("cnn", np.full((2, 3, 32, 32), np.nan, np.float32))).all()
    _still_serves(server, held_out)
    client.close()


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_malformed_http_bodies_are_rejected(server, held_out):
    base = f"http://{server.http_url}/v2/models/cnn/infer"
    # Triton 2.51 answers a body that is not JSON with 500 (not 400), but always with a JSON error that says why.
    # An empty body is read as a raw binary tensor of 0 bytes.
    cases = [(b"", "byte size mismatch"), (b"{not json", "parse"), (b'{"inputs": [{"name": "input"}]}', "input")]
    for body, reason in cases:
        status, text = _post(base, body, {"Content-Type": "application/json"})
        assert status in (400, 500), (body, status, text)
        assert re.search(reason, json.loads(text)["error"], re.IGNORECASE), text
        _still_serves(server, held_out)


def test_admin_api_needs_the_key(server, held_out):
    url = f"http://{server.http_url}/v2/repository/models/cnn/unload"
    assert _post(url, b"{}")[0] == 403
    assert _post(url, b"{}", {"admin-key": "wrong"})[0] == 403
    for protocol, c in clients(server).items():
        keyless = InferenceClient(c.url, protocol)
        with pytest.raises(AdminError, match="refused.*admin key"):
            keyless.unload("cnn")
        with pytest.raises(AdminError, match="refused"):
            keyless.load("cnn_int8")
        keyless.close()
        c.close()
    grpc_raw = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(Exception, match="restricted"):
        grpc_raw.get_model_repository_index(headers={"admin-key": ADMIN_KEY})  # the HTTP header name is not enough
    grpc_raw.close()
    _still_serves(server, held_out)
    assert InferenceClient(server.http_url).is_ready("cnn")


def test_switched_variant_survives_a_config_only_reload(server, quick_repository, held_out):
    x = held_out[0][:8]
    with InferenceClient(server.http_url, admin_key=ADMIN_KEY, timeout_s=120) as admin:
        admin.switch_variant("cnn", "int8")
        admin.load("cnn", config=admin.model_config("cnn").with_instances(2))  # what the orchestrator does
        reference = ox.run_onnx(ox.session(quick_repository / "cnn_int8" / "1" / "model.onnx"), x)
        np.testing.assert_allclose(admin.infer("cnn", x), reference, rtol=1e-5, atol=1e-5)
        with pytest.raises(AdminError, match="not in cnn"):
            admin.switch_variant("cnn", "int4")
        admin.load("cnn", config=admin.model_config("cnn").with_instances(1))
        admin.switch_variant("cnn", "fp32")


def test_failed_load_keeps_the_old_model_serving(server, quick_repository, held_out):
    with InferenceClient(server.http_url, admin_key=ADMIN_KEY) as client:
        bad = client.model_config("cnn").with_parameters(onnx_file="missing.onnx")
        with pytest.raises(AdminError, match="previous copy keeps serving"):
            client.load("cnn", config=bad)
        assert client.model_config("cnn").parameters.get("onnx_file") is None
    _still_serves(server, held_out)


def test_variant_switch_under_8_concurrent_clients_loses_nothing(server, quick_repository, held_out):
    x = held_out[0][:4]
    stop = threading.Event()
    ok, failures, lock = [0], [], threading.Lock()

    def worker(protocol: str):
        url = server.http_url if protocol == "http" else server.grpc_url
        with InferenceClient(url, protocol, timeout_s=60) as client:
            while not stop.is_set():
                try:
                    assert client.infer("cnn", x).shape == (4, 10)
                    with lock:
                        ok[0] += 1
                except Exception as exc:  # counted, not raised: the assertion below reports them all
                    with lock:
                        failures.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(p,)) for p in ["http", "grpc"] * 4]
    for t in threads:
        t.start()
    admin = InferenceClient(server.http_url, admin_key=ADMIN_KEY, timeout_s=120)
    sequence = ["int8", "pruned", "distilled", "fp16", "fp32"]
    try:
        time.sleep(0.5)
        for variant in sequence:
            admin.switch_variant("cnn", variant)
            time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert failures == [], failures[:3]
    assert ok[0] > 50
    assert served_variant(admin.model_config("cnn"), admin.ready_versions("cnn")) == "fp32"
    reference = ox.run_onnx(ox.session(quick_repository / "cnn_fp32" / "1" / "model.onnx"), x)
    np.testing.assert_allclose(admin.infer("cnn", x), reference, rtol=1e-5, atol=1e-5)
    admin.close()


def test_a_step_down_to_the_standby_unloads_the_served_version_and_reloads_nothing(server, quick_repository, held_out):
    """The orchestrator's in-place step: the standby, loaded beside the served variant at a lower version, takes
    the traffic when the served version is unloaded; its instances (stub processes) are the same ones before and
    after, and no request fails on the way."""
    x = held_out[0][:4]
    admin = InferenceClient(server.grpc_url, "grpc", admin_key=ADMIN_KEY, timeout_s=120)
    versions = variant_versions(admin.model_config("cnn"))
    below, top = sorted(versions, key=versions.get)[-2:]
    applier = Applier(admin, "cnn")  # no standby: only the served version is loaded
    start = applier.current()[1]
    stop = threading.Event()
    ok, failures = [0], []

    def worker():
        with InferenceClient(server.grpc_url, "grpc", timeout_s=60) as client:
            while not stop.is_set():
                try:
                    client.infer("cnn", x)
                    ok[0] += 1
                except Exception as exc:  # counted, not raised: the assertion below reports them all
                    failures.append(repr(exc))

    try:
        assert applier.apply(replace(start, variant=top)).ok
        assert admin.ready_versions("cnn") == (versions[top],)
        applier.standby = lambda v: below if v == top else None
        prepared = applier.prepare_standby()
        assert prepared is not None and prepared.ok, prepared
        assert admin.ready_versions("cnn") == (versions[below], versions[top])
        assert applier.current()[1] == replace(start, variant=top)  # the standby takes no requests
        assert applier.prepare_standby() is None  # already loaded
        below_dir = f"{quick_repository / 'cnn' / str(versions[below])}/"
        stubs = sorted(_stubs(path=below_dir))
        assert stubs
        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        result = applier.apply(replace(start, variant=below))
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert result.ok, result.error
        assert failures == [], failures[:3]
        assert ok[0] > 10
        assert admin.ready_versions("cnn") == (versions[below],)
        assert applier.current()[1] == replace(start, variant=below)
        assert sorted(_stubs(path=below_dir)) == stubs  # the same instances: nothing was reloaded
        reference = ox.run_onnx(ox.session(Path(below_dir) / "model.onnx"), x)
        np.testing.assert_allclose(admin.infer("cnn", x), reference, rtol=1e-5, atol=1e-5)
    finally:
        stop.set()
        applier.standby = None
        applier.apply(start)  # the module's server is shared: leave it as it was
        admin.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _stubs(pgid: int | None = None, path: str | None = None) -> list[int]:
    """Python-backend stubs in a process group, or launched from a backend copy under ``path``."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                group = os.getpgid(int(pid))
            except OSError:
                continue
            if "triton_python_backend_stub" in cmd and (group == pgid or (path is not None and path in cmd)):
                found.append(int(pid))
    return found


def _servers(path: str) -> list[int]:
    """tritonserver processes whose command line mentions ``path`` (their backend copy lives under it)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"tritonserver") and any(path.encode() in c for c in cmd):
                found.append(int(pid))
    return found


def test_shutdown_leaves_no_server_or_stub(quick_repository, server_cache, held_out):
    srv = start_server(quick_repository, server_cache, ("cnn", "cnn_int8"))
    pgid = srv.proc.pid
    with InferenceClient(srv.grpc_url, "grpc") as client:
        assert client.infer("cnn_int8", held_out[0][:2]).shape == (2, 10)
    assert len(_stubs(pgid)) == 2
    srv.stop()
    assert not _group_alive(pgid)
    assert _stubs(pgid) == []
    with pytest.raises(ServerUnavailableError):
        InferenceClient(srv.http_url, timeout_s=2).infer("cnn", held_out[0][:1])


def test_serve_command_restarts_a_dead_triton_and_stops_on_sigterm(quick_repository, tmp_path, held_out):
    env = {**os.environ, "TRITUNE_ADMIN_KEY": ""}
    key_file = tmp_path / "admin.key"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "console",
            "serve",
            "--repository",
            str(quick_repository),
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--models",
            "cnn",
            "--admin-key-file",
            str(key_file),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.strip().startswith("log"):
                break
        text = "".join(lines)
        assert "Triton ready" in text, text + proc.stderr.read() if proc.poll() is not None else text
        # The endpoints table: a header row, then "Triton  http://HOST:PORT  HOST:PORT  http://HOST:PORT/metrics".
        http = next(
            ln.split()[1].removeprefix("http://") for ln in lines if ln.split()[:1] == ["Triton"] and "http://" in ln
        )
        assert http.startswith("127.0.0.1:")
        assert oct(key_file.stat().st_mode & 0o777) == "0o600" and len(key_file.read_text().strip()) >= 32
        with InferenceClient(http) as client:
            assert client.infer("cnn", held_out[0][:3]).shape == (3, 10)
        assert len(_stubs(path=str(tmp_path))) == 1
        with InferenceClient(http, admin_key=key_file.read_text().strip()) as admin:
            admin.load("cnn")  # the stored key unlocks the admin API

        # tritonserver dies (as 2.51's Python backend has, aborting under load): serve brings it back, same port
        (server_pid,) = _servers(str(tmp_path))
        os.kill(server_pid, signal.SIGKILL)
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any("Triton ready again" in ln for ln in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert any("tritonserver exited with status -9" in ln and "restarting (1/3)" in ln for ln in lines), lines
        assert any("Triton ready again" in ln for ln in lines), lines
        assert list((tmp_path / "cache").glob("tritonserver-*.died-1.log"))
        with InferenceClient(http) as client:
            assert client.infer("cnn", held_out[0][:2]).shape == (2, 10)
        assert _servers(str(tmp_path)) != [server_pid] and len(_stubs(path=str(tmp_path))) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "Triton stopped" in proc.stdout.read()
        assert _stubs(path=str(tmp_path)) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
