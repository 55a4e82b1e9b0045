"""``tritune loadtest``: Locust against a running Triton, headless by default, into a run folder with a report."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from loadtest.report import write_report
from loadtest.run import USER_CLASSES, LoadTestOptions, answers, run_locust


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = LoadTestOptions()
    g = p.add_argument_group("target")
    g.add_argument("--url", default=d.http_url, help="Triton HTTP host:port (default: %(default)s)")
    g.add_argument("--grpc-url", default=d.grpc_url, help="Triton gRPC host:port (default: %(default)s)")
    g.add_argument("--protocol", default=d.protocol, choices=sorted(USER_CLASSES), help="(default: %(default)s)")
    g.add_argument("--model", default=d.model, help="(default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per request (default: %(default)s)")
    g = p.add_argument_group("load")
    g.add_argument(
        "--shape",
        default=d.shape,
        help="KIND:key=value,... with KIND constant|ramp|step|spike|diurnal|replay, e.g. "
        "'step:values=4/16/4,step_s=30' or 'replay:path=trace.csv' (default: %(default)s)",
    )
    g.add_argument(
        "--open-loop", action="store_true", help="the shape's values are requests/s sent on schedule, not users"
    )
    g.add_argument("--open-users", type=int, default=d.open_users, help="open loop: users sharing the rate")
    g.add_argument("--wait-ms", type=float, default=d.wait_ms, help="closed loop: pause after each answer")
    g.add_argument("--spawn-rate", type=float, default=d.spawn_rate, help="users started per second (0: at once)")
    g.add_argument("--request-timeout-s", type=float, default=d.request_timeout_s, help="(default: %(default)s)")
    g.add_argument(
        "--workers", type=int, default=d.workers, help="distributed: a Locust master and N workers here (default: 0)"
    )
    g.add_argument("--web", action="store_true", help="keep Locust's web UI up on 127.0.0.1 (--web-port)")
    g.add_argument("--web-port", type=int, default=d.web_port, help="(default: %(default)s)")
    g.add_argument(
        "--data",
        type=Path,
        default=None,
        help="samples to send: .npz (one array per input, optional labels), image folder or perf_analyzer JSON; "
        "default: the seed CNN's held-out images for a model with its interface, else random samples",
    )
    g.add_argument("--dataset", default=d.dataset, help="the seed CNN's held-out images (default: %(default)s)")
    g.add_argument("--data-dir", type=Path, default=d.data_dir, help="(default: %(default)s)")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=d.out_dir, help="parent of the run folder (default: %(default)s)")
    g.add_argument("--run-name", default="", help="run folder name (default: loadtest-<UTC time>)")
    g.add_argument("--slo-p99-ms", type=float, default=0.0, help="draw this SLO in the report (0: none)")
    g.add_argument("--decision-log", type=Path, default=None, help="orchestrator decisions to mark in the report")
    g.add_argument("--repository", type=Path, default=Path("model_repository"), help="for the report's variant table")


def options_from_args(args: argparse.Namespace) -> LoadTestOptions:
    return LoadTestOptions(
        http_url=args.url,
        grpc_url=args.grpc_url,
        protocol=args.protocol,
        model=args.model,
        batch_size=args.batch_size,
        shape=args.shape,
        open_loop=args.open_loop,
        open_users=args.open_users,
        wait_ms=args.wait_ms,
        spawn_rate=args.spawn_rate,
        workers=args.workers,
        out_dir=args.out,
        run_name=args.run_name,
        web=args.web,
        web_port=args.web_port,
        data=args.data,
        dataset=args.dataset,
        repository=args.repository,
        data_dir=args.data_dir,
        request_timeout_s=args.request_timeout_s,
    )


def run(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    opts.validate()
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    if opts.web:
        print(f"Locust web UI on http://127.0.0.1:{opts.web_port} (Ctrl-C to stop)", flush=True)
    try:
        result = run_locust(opts, progress=lambda m: print(m, flush=True), should_stop=lambda: stop["now"])
    except KeyboardInterrupt:
        print("interrupted: Locust stopped; partial results are in the run folder", flush=True)
        return 130
    report = write_report(
        result.run_dir,
        title=f"tritune loadtest: {opts.model} over {opts.protocol}, {opts.shape}",
        slo_p99_ms=args.slo_p99_ms or None,
        decision_log=args.decision_log,
        repository=args.repository,
    )
    s = result.summary
    print(
        f"{s['requests']} requests, {s['failures']} failed, {answers(s)}; "
        f"p50 {s.get('client_p50_ms')} ms, p99 {s.get('client_p99_ms')} ms, {s.get('throughput_req_per_s')} req/s"
    )
    print(f"run folder: {result.run_dir}\nreport: {report}")
    if not result.valid:
        print(f"INVALID RUN: {result.invalid_reason}")
        return 3
    return result.exit_code
