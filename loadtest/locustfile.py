"""Locust users for Triton: ``TritonHttpUser`` and ``TritonGrpcUser`` sending the user's data to any model.

Run it through ``tritune loadtest`` (headless, a run folder with CSV/HTML/JSON and a report), or directly::

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 TritonHttpUser           # web UI on :8089
    locust -f loadtest/locustfile.py --grpc-url 127.0.0.1:8001 --load-shape step:values=4/16/4,step_s=30 \
        --headless TritonGrpcUser

The model's inputs and outputs are read from Triton at start (its config), as perf_analyzer reads them. Requests
carry ``--data`` (an .npz with one array per input and optional ``labels``, an ImageFolder folder, or
perf_analyzer's JSON), or, without it, random data of the right datatypes and shapes. Where the data has labels and
the model gives class scores, every answer is checked: a wrong answer is counted apart from errors
(``wrong_answers`` in the run summary), because a server that answers fast and wrong is not an error Locust sees.

Closed loop (default): each user sends, waits for the answer, waits ``--wait-ms``, repeats; the load shape gives the
number of users. Open loop (``--open-loop``): the load shape gives requests per second; ``--open-users`` users send
on a fixed schedule whether or not earlier answers have arrived, and latency counts from the scheduled send time,
so a slow server cannot slow the load down (no coordinated omission).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import time
from pathlib import Path

import gevent

# gRPC must cooperate with gevent, or every call blocks the hub (19 vs 78 req/s measured); this has to run after
# Locust's monkey-patching (importing locust did that) and before any gRPC object exists.
import grpc.experimental.gevent as grpc_gevent
import numpy as np
from gevent.pool import Group
from locust import LoadTestShape, User, events, task
from locust.runners import MasterRunner, WorkerRunner

grpc_gevent.init_gevent()

# tritune stops Locust with SIGINT (its reports are written on the way out). A process started as a background job of
# a non-interactive shell (``cmd &`` in a script, a CI step) ignores SIGINT, and so do its children: Locust would
# ignore the stop, be killed 15 s later and leave no summary. Its own session keeps a terminal's Ctrl-C away anyway.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402

from loadtest.shapes import Shape, parse_shape  # noqa: E402
from tritune.accuracy import predicted  # noqa: E402
from tritune.model_config import ModelConfig  # noqa: E402
from tritune.samples import Samples, load_samples, synthesize  # noqa: E402
from tritune.signature import Signature  # noqa: E402

_wrong_answers = 0  # this process; workers report theirs to the master (report_to_master / worker_report)
_worker_wrong_answers: dict[str, int] = {}
_records: list[tuple[float, str, float, int, int]] = []  # (end epoch s, type, latency ms, ok, wrong) for reports
_data: tuple[Signature, Samples] | None = None  # read once per process, by the first user
_start_epoch: float | None = None


@events.init_command_line_parser.add_listener
def _(parser):
    g = parser.add_argument_group("tritune")
    g.add_argument("--triton-model", default="cnn", help="model name on Triton (default: cnn)")
    g.add_argument("--grpc-url", default="127.0.0.1:8001", help="host:port of Triton's gRPC endpoint")
    g.add_argument("--batch-size", type=int, default=1, help="samples per request (default: 1)")
    g.add_argument(
        "--data", default="", help="samples to send: .npz, image folder or perf_analyzer JSON (default: random)"
    )
    g.add_argument("--wait-ms", type=float, default=0.0, help="closed loop: pause after each answer (default: 0)")
    g.add_argument("--load-shape", default="", help="KIND:key=value,... (see loadtest/shapes.py); default -u/-r/-t")
    g.add_argument("--open-loop", action="store_true", help="the shape gives requests/s, not users")
    g.add_argument("--open-users", type=int, default=4, help="open loop: users sharing the rate (default: 4)")
    g.add_argument("--request-timeout-s", type=float, default=30.0, help="per-request timeout (default: 30)")
    g.add_argument("--tritune-out", default="", help="folder for tritune's summary and per-request records")


def _model_data(user: _TritonUser, model: str, path: str) -> tuple[Signature, Samples]:
    """The model's signature (from Triton) and the samples to send, read once per process.

    The set-up reads are not requests under test: they go through ``user.setup_client``, so a per-request deadline
    shorter than a busy machine's round trip cannot kill the user in on_start, before it sends (and counts) anything.
    """
    global _data
    if _data is None:
        client = user.setup_client()
        try:
            grpc = user.request_type == "gRPC"
            raw = client.get_model_config(model, as_json=True) if grpc else client.get_model_config(model)
        finally:
            if client is not user.client:
                with contextlib.suppress(Exception):
                    client.close()
        signature = Signature.from_config(ModelConfig.from_dict(raw))
        samples = load_samples(path, signature, "--data") if path else synthesize(signature, 64)
        _data = (signature, samples)
    return _data


def _shape(options) -> Shape | None:
    return parse_shape(options.load_shape) if getattr(options, "load_shape", "") else None


class _TritonUser(User):
    abstract = True
    request_type = "?"

    def on_start(self) -> None:
        global _start_epoch
        opts = self.environment.parsed_options
        self.model, self.batch = opts.triton_model, max(1, opts.batch_size)
        self.timeout_s = opts.request_timeout_s
        self.open_loop = bool(opts.open_loop)
        self.pending = Group()
        if _start_epoch is None:
            _start_epoch = time.time()
        self.client = self.connect(opts)
        self.signature, self.samples = _model_data(self, self.model, opts.data)
        if not self.signature.batched:
            self.batch = 1  # a model without a batch dimension takes one sample a request
        classifier = self.signature.classifier_output
        # Answers are checked where the data has labels and the model gives class scores.
        self.judged = classifier.name if classifier is not None and self.samples.labels is not None else None
        self.cursor = int.from_bytes(os.urandom(2), "little") % len(self.samples)
        self.name = f"{self.model} [batch {self.batch}]"

    def on_stop(self) -> None:
        # Unclosed gRPC clients keep Locust from exiting; outstanding open-loop requests are abandoned on stop.
        self.pending.kill(block=False)
        with contextlib.suppress(Exception):
            self.client.close()

    def setup_client(self):
        """The client for the set-up reads: the request client, unless its deadline is the one under test."""
        return self.client

    def wait_time(self) -> float:
        return 0.0 if self.open_loop else self.environment.parsed_options.wait_ms / 1000

    def next_batch(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The next request's inputs (``batch`` samples, or one sample whole without a batch dimension)."""
        n = len(self.samples)
        idx = (self.cursor + np.arange(self.batch)) % n
        self.cursor = (self.cursor + self.batch) % n
        if self.signature.batched:
            inputs = {k: v[idx] for k, v in self.samples.inputs.items()}
        else:
            inputs = {k: v[idx[0]] for k, v in self.samples.inputs.items()}
        return inputs, idx

    def one_request(self, scheduled: float | None = None) -> None:
        global _wrong_answers
        inputs, idx = self.next_batch()
        start = time.perf_counter() if scheduled is None else scheduled
        exc, length, wrong = None, 0, 0
        try:
            outputs = self.infer(inputs)
            length = sum(o.nbytes for o in outputs.values())
            if self.judged is not None:
                scores = outputs[self.judged] if self.signature.batched else outputs[self.judged][None]
                wrong = int((predicted(scores) != self.samples.labels[idx[: len(scores)]]).sum())
        except Exception as e:  # every failure is reported to Locust, none stops the user
            exc = e
        elapsed_ms = (time.perf_counter() - start) * 1000
        if wrong:
            _wrong_answers += wrong
        _records.append((time.time(), self.request_type, elapsed_ms, exc is None, wrong))
        self.environment.events.request.fire(
            request_type=self.request_type,
            name=self.name,
            response_time=elapsed_ms,
            response_length=length,
            exception=exc,
            context={"wrong_answers": wrong},
        )

    @task
    def infer_task(self) -> None:
        if not self.open_loop:
            self.one_request()
            return
        # Open loop: this user's share of the shape's rate, on a schedule independent of the answers.
        opts = self.environment.parsed_options
        shape = _shape(opts)
        users = max(1, opts.open_users)
        t0 = _start_epoch or time.time()
        next_send = time.perf_counter()
        while True:
            rate = shape.value(time.time() - t0) if shape else float(opts.num_users or 1)
            if rate is None:
                gevent.sleep(0.5)
                continue
            per_user = max(rate / users, 1e-3)
            delay = next_send - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            self.pending.spawn(self.one_request, next_send)
            next_send += 1.0 / per_user


class TritonHttpUser(_TritonUser):
    """HTTP/REST (KServe v2) on tritonclient.http, which is gevent-native: one client per user."""

    request_type = "HTTP"
    host = "http://127.0.0.1:8000"

    def connect(self, opts):
        concurrency = 64 if self.open_loop else 1
        return httpclient.InferenceServerClient(
            self.address, connection_timeout=self.timeout_s, network_timeout=self.timeout_s, concurrency=concurrency
        )

    @property
    def address(self) -> str:
        return self.host.split("://", 1)[-1].rstrip("/")

    def setup_client(self):
        # tritonclient.http's deadlines belong to the client, not the call: set-up gets one with its defaults.
        return httpclient.InferenceServerClient(self.address)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = []
        for t in self.signature.inputs:
            tensor = httpclient.InferInput(t.name, list(inputs[t.name].shape), t.datatype)
            tensor.set_data_from_numpy(inputs[t.name], binary_data=True)
            tensors.append(tensor)
        outs = [httpclient.InferRequestedOutput(t.name, binary_data=True) for t in self.signature.outputs]
        result = self.client.infer(self.model, tensors, outputs=outs, timeout=int(self.timeout_s * 1e6))
        return {t.name: result.as_numpy(t.name) for t in self.signature.outputs}


class TritonGrpcUser(_TritonUser):
    """gRPC on tritonclient.grpc with gevent support initialised; the client is closed in on_stop."""

    request_type = "gRPC"

    def connect(self, opts):
        return grpcclient.InferenceServerClient(opts.grpc_url)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = []
        for t in self.signature.inputs:
            tensor = grpcclient.InferInput(t.name, list(inputs[t.name].shape), t.datatype)
            tensor.set_data_from_numpy(inputs[t.name])
            tensors.append(tensor)
        result = self.client.infer(self.model, tensors, client_timeout=self.timeout_s)
        return {t.name: result.as_numpy(t.name) for t in self.signature.outputs}


class TrituneShape(LoadTestShape):
    """``--load-shape`` as Locust's ``tick()``; without it, ``-u``/``-r`` hold until ``-t`` ends the run."""

    use_common_options = True

    def tick(self):
        opts = self.runner.environment.parsed_options
        shape = _shape(opts)
        spawn_rate = float(opts.spawn_rate or 0) or None
        if shape is None:
            return int(opts.num_users or 1), spawn_rate or float(opts.num_users or 1)
        t = self.get_run_time()
        if opts.open_loop:  # a fixed pool of users; they read the rate from the shape themselves
            return (opts.open_users, float(opts.open_users)) if shape.value(t) is not None else None
        return shape.tick(t, spawn_rate)


@events.report_to_master.add_listener
def _(client_id, data, **_kw):
    data["tritune_wrong_answers"] = _wrong_answers


@events.worker_report.add_listener
def _(client_id, data, **_kw):
    if "tritune_wrong_answers" in data:
        _worker_wrong_answers[client_id] = data["tritune_wrong_answers"]


@events.test_start.add_listener
def _(environment, **_kw):
    global _start_epoch
    _start_epoch = time.time()


@events.quitting.add_listener
def _(environment, **_kw):
    """Write this process's request records, and on the master (or a lone process) the run summary."""
    out = getattr(environment.parsed_options, "tritune_out", "")
    if not out:
        return
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    runner = environment.runner
    if _records:
        with (out_dir / f"requests-{os.getpid()}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["end_epoch_s", "type", "latency_ms", "ok", "wrong_answers"])
            w.writerows((f"{e:.4f}", t, f"{lat:.3f}", ok, wrong) for e, t, lat, ok, wrong in _records)
    if isinstance(runner, WorkerRunner):
        return
    total = environment.stats.total
    summary = {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "wrong_answers": _wrong_answers + sum(_worker_wrong_answers.values()),
        "batch_size": max(1, environment.parsed_options.batch_size) if _data is None or _data[0].batched else 1,
        "data": _data[1].source if _data is not None else None,
        "answers_checked": bool(_data and _data[1].labels is not None and _data[0].classifier_output is not None),
        "mode": "distributed" if isinstance(runner, MasterRunner) else "local",
        "workers": len(_worker_wrong_answers) if isinstance(runner, MasterRunner) else 0,
        "cpu_warning": bool(getattr(runner, "cpu_warning_emitted", False)),
        "worker_cpu_warning": bool(getattr(runner, "worker_cpu_warning_emitted", False)),
        "open_loop": bool(environment.parsed_options.open_loop),
        "load_shape": environment.parsed_options.load_shape,
    }
    (out_dir / "locust_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
