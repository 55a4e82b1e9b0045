"""Closed-loop measurement at a fixed concurrency, until stable (perf_analyzer's rule).

``concurrency`` threads share one gRPC client (thread-safe) and keep one request each in flight. Measurement runs in
windows of ``window_s``; it is *stable* when the last ``stable_windows`` windows' throughput and mean latency are each
within ``tolerance`` of their mean. The reported figures cover those windows only.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import tritonclient.grpc as grpcclient

from tritune import slo
from tritune.accuracy import predicted
from tritune.model_config import ModelConfig
from tritune.signature import Signature


@dataclass(frozen=True)
class Measurement:
    throughput_infer_per_s: float  # images per second (requests × batch)
    p50_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float
    requests: int
    failures: int
    wrong_answers: int
    stable: bool
    windows: int  # windows measured, warm-up excluded

    def to_json(self) -> dict:
        # No answered request leaves latencies infinite; JSON has no infinity, so they become null.
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class StabilityRule:
    window_s: float = 2.0
    stable_windows: int = 3
    tolerance: float = 0.10
    max_windows: int = 10
    warmup_s: float = 1.0


def _stable(ws: list[tuple[float, float]], rule: StabilityRule) -> bool:
    if len(ws) < rule.stable_windows:
        return False
    last = np.array(ws[-rule.stable_windows :])
    if (last[:, 0] <= 0).any():
        return False
    mean = last.mean(axis=0)
    return bool((np.abs(last - mean) <= rule.tolerance * mean).all())


def measure(
    url: str,
    model: str,
    samples: np.ndarray | dict[str, np.ndarray],
    labels: np.ndarray | None,
    concurrency: int,
    batch: int = 1,
    rule: StabilityRule = StabilityRule(),
    timeout_s: float = 30.0,
    signature: Signature | None = None,
) -> Measurement:
    """Closed loop: ``concurrency`` threads each send ``batch`` samples (one array per model input, or one array
    for a one-input model), wait for the answer and send again, until the throughput is stable."""
    client = grpcclient.InferenceServerClient(url)
    if signature is None:
        signature = Signature.from_config(ModelConfig.from_dict(client.get_model_config(model, as_json=True)))
    if isinstance(samples, np.ndarray):
        samples = {signature.inputs[0].name: samples}
    samples = signature.check_inputs(samples, "the sweep's samples")
    n = len(next(iter(samples.values())))
    batch = batch if signature.batched else 1
    classifier = signature.classifier_output
    judged = classifier.name if classifier is not None and labels is not None else None
    records: list[tuple[float, float, bool, int]] = []  # (end monotonic s, latency ms, ok, wrong)
    lock = threading.Lock()
    stop = threading.Event()

    def worker(k: int) -> None:
        i = k * 7919
        while not stop.is_set():
            idx = [(i + j) % n for j in range(batch)]
            i += batch
            tensors = []
            for t in signature.inputs:
                array = samples[t.name][idx] if signature.batched else samples[t.name][idx[0]]
                tensor = grpcclient.InferInput(t.name, list(array.shape), t.datatype)
                tensor.set_data_from_numpy(array)
                tensors.append(tensor)
            t = time.monotonic()
            ok, wrong = True, 0
            try:
                result = client.infer(model, tensors, client_timeout=timeout_s)
                if judged is not None:
                    out = result.as_numpy(judged)
                    scores = out if signature.batched else out[None]
                    wrong = int((predicted(scores) != labels[idx]).sum())
            except Exception:  # counted; the measurement goes on
                ok = False
            end = time.monotonic()
            with lock:
                records.append((end, (end - t) * 1000, ok, wrong))
            if not ok:
                time.sleep(0.01)  # a failing server must not turn this into a busy loop

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for th in threads:
        th.start()
    try:
        time.sleep(rule.warmup_s)
        start = time.monotonic()
        edges: list[float] = [start]
        ws: list[tuple[float, float]] = []
        while len(ws) < rule.max_windows:
            time.sleep(max(0.0, edges[-1] + rule.window_s - time.monotonic()))
            edges.append(time.monotonic())
            with lock:
                win = [r for r in records if edges[-2] <= r[0] < edges[-1]]
            lat = [r[1] for r in win if r[2]]
            ws.append((len(lat) * batch / rule.window_s, float(np.mean(lat)) if lat else 0.0))
            if _stable(ws, rule):
                break
        stable = _stable(ws, rule)
        since = edges[-min(rule.stable_windows, len(ws)) - 1]
    finally:
        stop.set()
        for th in threads:
            th.join(timeout_s + 1)
        client.close()
    with lock:
        win = [r for r in records if since <= r[0] < edges[-1]]
    lat = np.array([r[1] for r in win if r[2]])
    span = edges[-1] - since
    # no successful request: an infinite percentile, which no SLO accepts
    pct = (lambda q: slo.percentile_ms(lat, q)) if len(lat) else (lambda q: float("inf"))
    return Measurement(
        throughput_infer_per_s=round(len(lat) * batch / span, 1),
        p50_ms=pct(50),
        p95_ms=pct(95),
        p99_ms=pct(99),
        avg_ms=round(float(lat.mean()), 2) if len(lat) else float("inf"),
        requests=len(win),
        failures=sum(1 for r in win if not r[2]),
        wrong_answers=sum(r[3] for r in win),
        stable=stable,
        windows=len(ws),
    )
