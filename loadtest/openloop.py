"""An open-loop load generator: requests leave on schedule whether or not earlier ones have returned, and latency
is measured from the scheduled send time, so a slow server cannot slow the load down (no coordinated omission).
Used by the orchestrator's tests and benchmarks; Locust users live in ``loadtest/locustfile.py``.

It is built to cost the server as little CPU as possible, because on a shared machine every core-second it spends
comes out of Triton's: one asyncio loop, requests serialized once per image before the clock starts, responses
parsed only for the top-1 check, the garbage collector off during the run. Two transports: gRPC (grpc.aio, raw
protobuf bytes, several channels) and HTTP (Triton's binary tensor extension over a pool of keep-alive
connections, written on asyncio's transports directly: about 2.5× less client CPU per request than grpc.aio,
which saturates one core near 2,500 requests/s). Each run reports its own CPU share and how late sends left; a run
whose generator ran out of CPU or fell behind its schedule is marked invalid (:data:`GENERATOR_CPU_LIMIT`,
:data:`SEND_LAG_LIMIT_MS`), as Locust warns above 90% CPU.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from tritune import slo
from tritune.accuracy import predicted
from tritune.signature import Signature

RateFn = Callable[[float], float]  # seconds since start → requests per second

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
# The loop is one thread: above this share of one core it cannot keep the schedule, and the load it offers is no
# longer the load asked for (Locust's own warning threshold).
GENERATOR_CPU_LIMIT = 0.9
# A late send only makes a run pessimistic (its latency is measured from the scheduled time, so the lateness counts
# against the server); what makes a run wrong is a generator that no longer offers the load asked for. Sends this
# late (p99) mean the schedule slipped, not that the loop was preempted for a few milliseconds on a busy machine.
SEND_LAG_LIMIT_MS = 50.0


@dataclass
class GeneratorCost:
    """What the generator itself cost during a run, and whether the run is valid because of it."""

    cpu_s: float
    wall_s: float
    send_lag_p50_ms: float | None
    send_lag_p99_ms: float | None
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)

    @property
    def cpu_core_share(self) -> float:
        """CPU seconds per wall second: 1.0 is one core (the event loop's limit)."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def invalid_because(self) -> str | None:
        if self.cpu_core_share > GENERATOR_CPU_LIMIT:
            return (
                f"the load generator used {self.cpu_core_share:.0%} of a core (limit {GENERATOR_CPU_LIMIT:.0%}): "
                "it, not the server, set the figures; lower the rate or run it on another machine"
            )
        if self.send_lag_p99_ms is not None and self.send_lag_p99_ms > SEND_LAG_LIMIT_MS:
            return (
                f"sends left {self.send_lag_p99_ms:.1f} ms late (p99; limit {SEND_LAG_LIMIT_MS:g} ms): the machine "
                "could not run the generator on schedule"
            )
        return None

    def report(self) -> dict:
        """The fields every benchmark prints beside its figures."""
        return {
            "cpu_core_share": round(self.cpu_core_share, 3),
            "machine_cpu_share": round(self.cpu_core_share / self.cores, 3),
            "send_lag_p50_ms": self.send_lag_p50_ms,
            "send_lag_p99_ms": self.send_lag_p99_ms,
            "valid": self.invalid_because is None,
            "invalid_because": self.invalid_because,
        }


@dataclass
class Record:
    scheduled_s: float  # since start
    latency_ms: float
    ok: bool
    error: str | None = None
    # Images of the request classified right, of ``images``: a batch-8 request with one wrong image counts 7 of 8,
    # so that a top-1 from these records is per image, as the manifest's is (not the share of all-right requests).
    correct: int | None = None
    images: int = 1
    # When the request really left (since start): later than scheduled by the loop's own slack (asyncio sleeps to
    # the millisecond epoll rounds up to; a busy loop). ``latency_ms`` counts that slack, as an open-loop client
    # must; ``latency_ms - lag`` is what perf_analyzer and Locust report (timed from their own send).
    sent_s: float | None = None

    @property
    def from_send_ms(self) -> float:
        return self.latency_ms - 1000 * (self.sent_s - self.scheduled_s) if self.sent_s is not None else self.latency_ms


@dataclass
class LoadResult:
    records: list[Record] = field(default_factory=list)
    duration_s: float = 0.0
    sent: int = 0
    generator: GeneratorCost | None = None

    @property
    def failures(self) -> list[Record]:
        return [r for r in self.records if not r.ok]

    @property
    def top1(self) -> float | None:
        """The share of answered images classified right (None without labels or answers)."""
        checked = [r for r in self.records if r.correct is not None]
        return sum(r.correct for r in checked) / sum(r.images for r in checked) if checked else None

    def windows(
        self, size_s: float = 5.0, slo_ms: float | None = None, start_s: float = 0.0, end_s: float | None = None
    ) -> list[dict]:
        """Per-window stats by scheduled time: offered and completed rate, p50/p99 (ms), failures, SLO met."""
        end_s = self.duration_s if end_s is None else end_s
        out = []
        t = start_s
        while t + size_s <= end_s + 1e-9:
            rs = [r for r in self.records if t <= r.scheduled_s < t + size_s]
            stats = slo.window_stats([r.latency_ms for r in rs if r.ok], sum(1 for r in rs if not r.ok), slo_ms)
            out.append(
                {
                    "start_s": round(t, 2),
                    "requests": len(rs),
                    "rate_per_s": round(len(rs) / size_s, 1),
                    **{k: stats[k] for k in ("p50_ms", "p99_ms", "failures", "slo_met")},
                }
            )
            t += size_s
        return out

    def summary(self, slo_ms: float | None = None, skip_s: float = 0.0) -> dict:
        rs = [r for r in self.records if r.scheduled_s >= skip_s]
        lat = np.array([r.latency_ms for r in rs if r.ok])
        good = sum(1 for r in rs if r.ok and (slo_ms is None or r.latency_ms <= slo_ms))
        span = max(self.duration_s - skip_s, 1e-9)
        sent = np.array([r.from_send_ms for r in rs if r.ok])
        return {
            "requests": len(rs),
            "failed": sum(1 for r in rs if not r.ok),
            "wrong_answers": sum(r.images - r.correct for r in rs if r.correct is not None),  # images, not requests
            "p50_ms": slo.percentile_ms(lat, 50),
            "p99_ms": slo.percentile_ms(lat, 99),
            # timed from the real send, as perf_analyzer times its requests (docs/benchmarks.md#peers)
            "p50_from_send_ms": slo.percentile_ms(sent, 50),
            "p99_from_send_ms": slo.percentile_ms(sent, 99),
            "throughput_per_s": round(sum(1 for r in rs if r.ok) / span, 1),
            "goodput_per_s": round(good / span, 1),
        }


def constant(rate: float) -> RateFn:
    return lambda _t: rate


def steps(*segments: tuple[float, float]) -> RateFn:
    """``steps((10, 100), (20, 400))``: 100/s for 10 s, then 400/s for 20 s (the last rate holds after)."""

    def fn(t: float) -> float:
        edge = 0.0
        for duration, rate in segments:
            edge += duration
            if t < edge:
                return rate
        return segments[-1][1]

    return fn


class _Grpc:
    """gRPC transport: one grpc.aio call per request over ``channels`` connections, raw protobuf bytes each way."""

    def __init__(self, load: OpenLoopLoad, channels: int):
        self.load, self.n_channels = load, max(1, channels)
        self.payloads = []
        for idx in load.windows:
            request = service_pb2.ModelInferRequest(model_name=load.model)
            for name, array in load.request_arrays(idx).items():
                tensor = request.inputs.add()
                tensor.name, tensor.datatype = name, load.signature.input(name).datatype
                tensor.shape.extend(array.shape)
                request.raw_input_contents.append(array.tobytes())
            self.payloads.append(request.SerializeToString())

    async def open(self) -> None:
        options = [
            ("grpc.use_local_subchannel_pool", 1),  # each channel its own connection
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
        ]
        self.channels = [grpc.aio.insecure_channel(self.load.url, options=options) for _ in range(self.n_channels)]
        self.calls = [ch.unary_unary(INFER_METHOD) for ch in self.channels]  # bytes in, bytes out
        self.tasks: set[asyncio.Task] = set()
        self.i = 0

    def send(self, k: int, scheduled: float) -> None:
        self.i += 1
        sent = time.perf_counter() - self.load._start
        task = asyncio.ensure_future(self._call(self.calls[self.i % len(self.calls)], k, scheduled, sent))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _call(self, call, k: int, scheduled: float, sent: float) -> None:
        try:
            reply = await call(self.payloads[k], timeout=self.load.timeout_s)
        except grpc.aio.AioRpcError as exc:
            self.load._record(k, scheduled, None, f"[{exc.code()}] {exc.details()}", sent)
        except Exception as exc:  # the channel itself failed: count it, keep the schedule
            self.load._record(k, scheduled, None, f"{type(exc).__name__}: {exc}", sent)
        else:
            scores = None
            if self.load.judged is not None:  # parsed only where answers are checked
                response = service_pb2.ModelInferResponse.FromString(reply)
                at = next(i for i, o in enumerate(response.outputs) if o.name == self.load.judged)
                scores = response.raw_output_contents[at]
            self.load._record(k, scheduled, scores, None, sent)

    async def drain(self, timeout_s: float) -> None:
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout_s)

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time (Triton does not pipeline)."""

    def __init__(self, http: _Http):
        self.http = http
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.pending: tuple[int, float, float] | None = None  # (payload index, scheduled time, sent time)
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def start(self, k: int, scheduled: float) -> None:
        self.pending = (k, scheduled, time.perf_counter() - self.http.load._start)
        self.deadline = self.http.loop.call_later(self.http.load.timeout_s, self.transport.abort)
        self.transport.write(self.http.payloads[k])

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.pending is None:
            return
        head = bytes(self.buf[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self._finish(None, "the server's reply has no Content-Length (chunked replies are not read here)")
            self.transport.abort()
            return
        stop = head.find(b"\r\n", at + 17)
        size = int(head[at + 17 : stop if stop > 0 else None])
        if len(self.buf) < end + 4 + size:
            return
        body = bytes(self.buf[end + 4 : end + 4 + size])
        del self.buf[: end + 4 + size]
        if head[9:12] == b"200":
            self._finish(self.http.scores(head, body), None)
        else:
            self._finish(None, f"HTTP {head[9:12].decode()}: {body[:200].decode(errors='replace')}")
        if self.transport is not None and not self.transport.is_closing():
            self.http.idle(self)

    def _finish(self, logits: bytes | None, error: str | None) -> None:
        k, scheduled, sent = self.pending
        self.pending = None
        self.deadline.cancel()
        self.http.load._record(k, scheduled, logits, error, sent)

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self.pending is not None:
            self._finish(None, f"connection lost ({exc or 'closed by the server or the deadline'})")
        self.http.lost(self)


class _Http:
    """HTTP transport: Triton's binary tensor extension on a pool of keep-alive connections; a request goes out on
    an idle connection at once, or on a new one (up to ``max_connections``; beyond that it waits for one, and
    that wait counts in its latency)."""

    def __init__(self, load: OpenLoopLoad, max_connections: int = 512):
        self.load, self.max_connections = load, max_connections
        host, _, port = load.url.removeprefix("http://").rstrip("/").rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.payloads = []
        outputs = [{"name": t.name, "parameters": {"binary_data": True}} for t in load.signature.outputs]
        for idx in load.windows:
            arrays = load.request_arrays(idx)
            raws = [a.tobytes() for a in arrays.values()]
            inputs = [
                {
                    "name": name,
                    "shape": list(a.shape),
                    "datatype": load.signature.input(name).datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
                for (name, a), raw in zip(arrays.items(), raws, strict=True)
            ]
            header = json.dumps({"inputs": inputs, "outputs": outputs}, separators=(",", ":")).encode()
            body = b"".join(raws)
            head = (
                f"POST /v2/models/{load.model}/infer HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {len(header)}\r\n"
                f"Content-Length: {len(header) + len(body)}\r\n\r\n"
            ).encode()
            self.payloads.append(head + header + body)

    def scores(self, head: bytes, body: bytes) -> bytes | None:
        """The judged output's bytes in a binary-extension reply (JSON header, then each output's bytes in the
        header's order), or None where answers are not checked."""
        if self.load.judged is None:
            return None
        key = b"\r\ninference-header-content-length:"
        at = head.find(key)
        stop = head.find(b"\r\n", at + len(key))
        size = int(head[at + len(key) : stop if stop > 0 else None]) if at >= 0 else len(body)
        offset = size
        for out in json.loads(body[:size])["outputs"]:
            n = out.get("parameters", {}).get("binary_data_size", 0)
            if out["name"] == self.load.judged:
                return body[offset : offset + n]
            offset += n
        return None

    async def open(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.free: list[_HttpConnection] = []
        self.open_connections = 0
        self.waiting: deque[tuple[int, float]] = deque()
        self.connecting: set[asyncio.Task] = set()

    def send(self, k: int, scheduled: float) -> None:
        if self.free:
            self.free.pop().start(k, scheduled)
        elif self.open_connections < self.max_connections:
            self.open_connections += 1
            task = asyncio.ensure_future(self._connect_and_send(k, scheduled))
            self.connecting.add(task)
            task.add_done_callback(self.connecting.discard)
        else:
            self.waiting.append((k, scheduled))

    async def _connect_and_send(self, k: int, scheduled: float) -> None:
        try:
            _, conn = await self.loop.create_connection(lambda: _HttpConnection(self), self.host, self.port)
        except OSError as exc:
            self.open_connections -= 1
            self.load._record(k, scheduled, None, f"cannot connect to {self.host}:{self.port}: {exc}")
            return
        conn.start(k, scheduled)

    def idle(self, conn: _HttpConnection) -> None:
        if self.waiting:
            conn.start(*self.waiting.popleft())
        else:
            self.free.append(conn)

    def lost(self, conn: _HttpConnection) -> None:
        self.open_connections -= 1
        if conn in self.free:
            self.free.remove(conn)
        if self.waiting and self.open_connections < self.max_connections:
            self.send(*self.waiting.popleft())

    async def drain(self, timeout_s: float) -> None:
        deadline = time.perf_counter() + timeout_s
        while self.load._answered < self.load._sent and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        for conn in list(self.free):
            if conn.transport is not None:
                conn.transport.close()
        await asyncio.sleep(0)


class OpenLoopLoad:
    """``OpenLoopLoad(url, model, samples).run(seconds, rate)``: open-loop load from one asyncio loop.

    ``protocol``: "grpc" (``url`` is host:port of the gRPC endpoint) or "http" (host:port of the HTTP endpoint;
    Triton's binary tensor extension, the cheaper of the two for the client: about a third of gRPC's CPU per
    request, see docs/benchmarks.md). ``samples`` is one array per model input (samples on axis 0), or one array
    for a model with one input; the model's signature is read from Triton unless given. ``batch`` samples per
    request (cycling through them; a model without a batch dimension takes one, whole); ``labels`` turn on the
    per-response top-1 check of the model's class scores; ``channels`` gRPC connections share the sends round robin.
    ``stop()`` ends a run early from another thread.
    """

    def __init__(
        self,
        url: str,
        model: str,
        samples: np.ndarray | dict[str, np.ndarray],
        labels: np.ndarray | None = None,
        batch: int = 1,
        timeout_s: float = 60.0,
        channels: int = 4,
        protocol: str = "grpc",
        signature: Signature | None = None,
    ):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        if signature is None:
            from tritune.client import InferenceClient

            with InferenceClient(url, protocol, timeout_s=30) as client:
                signature = client.signature(model)
        self.signature = signature
        if not signature.batched:
            batch = 1
        self.url, self.model, self.batch, self.timeout_s = url, model, batch, timeout_s
        if isinstance(samples, np.ndarray):
            samples = {signature.inputs[0].name: samples}
        self.inputs = signature.check_inputs(samples, "the load's samples")
        self.labels = None if labels is None else np.asarray(labels)
        n = len(next(iter(self.inputs.values())))
        if self.labels is not None and len(self.labels) != n:
            raise ValueError(f"{len(self.labels)} labels for {n} samples; give one label per sample")
        classifier = signature.classifier_output
        self.judged = classifier.name if classifier is not None and self.labels is not None else None
        self._scores_dtype = classifier.dtype.newbyteorder("<") if classifier is not None else None
        self._stop = threading.Event()
        self._on_answer: Callable[[bool], None] | None = None  # the closed loop's next send
        # One request per distinct window of samples, serialized before the clock starts: request i carries
        # samples (i·batch + k) mod n.
        self.windows = [[(i * batch + k) % n for k in range(batch)] for i in range(n // math.gcd(n, batch))]
        self._transport = _Grpc(self, channels) if protocol == "grpc" else _Http(self)

    def stop(self) -> None:
        self._stop.set()

    def request_arrays(self, idx: list[int]) -> dict[str, np.ndarray]:
        """One request's tensors: the window's samples, or one sample whole without a batch dimension."""
        if self.signature.batched:
            return {k: np.ascontiguousarray(v[idx]) for k, v in self.inputs.items()}
        return {k: np.ascontiguousarray(v[idx[0]]) for k, v in self.inputs.items()}

    def _record(
        self, k: int, scheduled: float, scores: bytes | None, error: str | None = None, sent: float | None = None
    ) -> None:
        latency = (time.perf_counter() - self._start - scheduled) * 1000
        self._answered += 1
        if error is not None:
            self._result.records.append(Record(scheduled, latency, False, error[:200], sent_s=sent))
        else:
            correct = None
            if self.judged is not None and scores is not None:
                window = self.windows[k]
                classes = predicted(np.frombuffer(scores, self._scores_dtype).reshape(len(window), -1))
                correct = int((classes == self.labels[window]).sum())
            self._result.records.append(Record(scheduled, latency, True, None, correct, len(self.windows[k]), sent))
        if self._on_answer is not None:
            self._on_answer(error is not None)

    def run(self, duration_s: float, rate: RateFn) -> LoadResult:
        # The collector would scan every record and call kept so far, more often the more requests are in flight:
        # at a few hundred requests/s that alone took a third of the generator's CPU and delayed sends by seconds.
        # Nothing the run allocates forms a cycle that must be freed before it ends; collect once afterwards.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return asyncio.run(self._run(duration_s, rate))
        finally:
            if was_enabled:
                gc.enable()

    def run_closed(
        self, duration_s: float, concurrency: int, until: Callable[[LoadResult, float], bool] | None = None
    ) -> LoadResult:
        """Closed loop: ``concurrency`` requests in flight, each answer sending the next at once (perf_analyzer's
        concurrency mode), for ``duration_s`` or until ``until(result so far, seconds since start)`` is true
        (asked every 50 ms). A record's ``scheduled_s`` is its real send time: a closed loop has no schedule, and
        its latency runs from the send. The same pre-serialized requests and transports as the open loop, so what
        the loop measures is the server's, not this client's: on 2 cores a thread per request with tritonclient
        cost 2× perf_analyzer's CPU and reported 25% less throughput at concurrency 1."""
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return asyncio.run(self._run_closed(duration_s, max(1, concurrency), until))
        finally:
            if was_enabled:
                gc.enable()

    async def _run_closed(self, duration_s: float, concurrency: int, until) -> LoadResult:
        load = self._result = LoadResult()
        self._sent = self._answered = 0
        transport = self._transport
        await transport.open()
        loop = asyncio.get_running_loop()
        n = len(self.windows)
        done = False

        def send() -> None:
            if done:
                return
            transport.send(self._sent % n, time.perf_counter() - self._start)
            self._sent += 1

        def answered(failed: bool) -> None:
            # The next send leaves after the answering callback returns (an HTTP connection is idle only then), and
            # after 10 ms where the request failed: a failing server must not turn the loop into a busy one.
            loop.call_later(0.01, send) if failed else loop.call_soon(send)

        self._on_answer = answered
        cpu0 = time.process_time()
        start = self._start = time.perf_counter()
        try:
            for _ in range(concurrency):
                send()
            while not self._stop.is_set():
                now = time.perf_counter() - start
                if now >= duration_s or (until is not None and until(load, now)):
                    break
                await asyncio.sleep(0.05)
            done = True
            load.duration_s = time.perf_counter() - start
            await transport.drain(self.timeout_s + 5)
        finally:
            done = True
            self._on_answer = None
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu0
            await transport.close()
        load.sent = self._sent
        load.generator = GeneratorCost(cpu, wall, None, None)
        load.records.sort(key=lambda r: r.scheduled_s)
        return load

    async def _run(self, duration_s: float, rate: RateFn) -> LoadResult:
        load = self._result = LoadResult()
        self._sent = self._answered = 0
        transport = self._transport
        await transport.open()
        lags_ms: list[float] = []
        cpu0 = time.process_time()
        start = self._start = time.perf_counter()
        t = 0.0
        n = len(self.windows)
        try:
            # t is a running sum of 1/rate: without the tolerance its rounding error adds a send at the very end
            while t < duration_s - 1e-9 and not self._stop.is_set():
                # Yield to the loop before every send, also when behind schedule: replies are read only while this
                # coroutine waits. asyncio's timers have millisecond granularity; a send may leave up to ~1 ms late,
                # and that lateness counts in its latency (it is measured from the scheduled time) and in the lag.
                await asyncio.sleep(max(0.0, t - (time.perf_counter() - start)))
                if self._sent % 8 == 0:  # a sample is enough for the lag's percentiles
                    lags_ms.append((time.perf_counter() - start - t) * 1000)
                transport.send(self._sent % n, t)
                self._sent += 1
                t += 1.0 / max(rate(t), 1e-3)
            load.duration_s = min(t, duration_s)
            await transport.drain(self.timeout_s + 5)  # every reply or its deadline
        finally:
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu0
            await transport.close()
        load.sent = self._sent
        load.generator = GeneratorCost(
            cpu, wall, slo.percentile_ms(lags_ms, 50, digits=3), slo.percentile_ms(lags_ms, 99, digits=3)
        )
        load.records.sort(key=lambda r: r.scheduled_s)
        return load
