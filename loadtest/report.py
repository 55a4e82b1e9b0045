"""One self-contained HTML report per run: plots inlined as PNG, no external files or scripts.

Sections (each only when its data exists): summary; throughput and p50/p95/p99 over time with the orchestrator's
actions marked; the serving config over time (instances, queue delay, preferred batch, variant); the variant table
from the repository's manifest; the sweep's Pareto frontier.
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime
from pathlib import Path

import numpy as np

from loadtest.run import answers, read_requests
from tritune import slo
from tritune.errors import LoadTestError, RepositoryError
from tritune.manifest import MANIFEST, Manifest

WINDOW_S = 5.0


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise LoadTestError("the report's plots need matplotlib: `pip install '.[serve]'`") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_formatter(minor: bool = False):
    from matplotlib.ticker import FuncFormatter

    # On log axes label only 1-2-5 ticks, in plain numbers (not 2×10^1).
    return FuncFormatter(lambda v, _pos: f"{v:g}" if not minor or f"{v:e}"[0] in "25" else "")


def read_decisions(path: Path | None) -> list[dict]:
    if not path or not Path(path).exists():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a killed orchestrator: skip it, keep the rest
        rec["epoch_s"] = datetime.fromisoformat(rec["time_utc"]).timestamp()
        out.append(rec)
    return out


def windows(rows: list[dict], t0: float, slo_ms: float | None, size_s: float = WINDOW_S) -> list[dict]:
    """Per-window (by answer time) throughput, p50/p95/p99 and SLO attainment of the per-request records."""
    if not rows:
        return []
    t_end = rows[-1]["end_epoch_s"]
    ends = np.array([r["end_epoch_s"] for r in rows])
    lat = np.array([r["latency_ms"] for r in rows])
    ok = np.array([r["ok"] for r in rows])
    out = []
    t = t0
    while t < t_end:
        m = (ends >= t) & (ends < t + size_s)
        good = lat[m & ok]
        out.append(
            {
                "t_s": round(t - t0, 1),
                "throughput_req_per_s": round(len(good) / size_s, 1),
                **slo.window_stats(good, int((m & ~ok).sum()), slo_ms),
            }
        )
        t += size_s
    return out


def _actions(decisions: list[dict]) -> list[dict]:
    return [d for d in decisions if d.get("event") in ("action", "apply-failed")]


def _timeline_plot(ws: list[dict], decisions: list[dict], t0: float, slo_ms: float | None) -> str:
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    t = [w["t_s"] + WINDOW_S / 2 for w in ws]
    ax1.plot(t, [w["throughput_req_per_s"] for w in ws], color="tab:blue", marker=".", label="answered req/s")
    ax1.set_ylabel("throughput (req/s)")
    ax1.set_title(f"Throughput and latency per {WINDOW_S:g}-second window (client side)")
    for key, color in (("p50_ms", "tab:green"), ("p95_ms", "tab:orange"), ("p99_ms", "tab:red")):
        ax2.plot(t, [w[key] if w[key] is not None else np.nan for w in ws], color=color, marker=".", label=key[:3])
    if slo_ms:
        ax2.axhline(slo_ms, color="black", linestyle="--", linewidth=1, label=f"SLO p99 {slo_ms:g} ms")
    ax2.set_yscale("log")
    ax2.yaxis.set_major_formatter(_plain_formatter())
    ax2.yaxis.set_minor_formatter(_plain_formatter(minor=True))
    ax2.set_ylabel("latency (ms, log)")
    ax2.set_xlabel("seconds since the first answer")
    for i, a in enumerate(_actions(decisions)):
        x = a["epoch_s"] - t0
        color = "tab:purple" if a["event"] == "action" else "tab:gray"
        for ax in (ax1, ax2):
            ax.axvline(x, color=color, alpha=0.6, linewidth=1.2)
        label = a.get("rule") or a.get("action")
        ax1.annotate(
            f"{i + 1}: {label}",
            (x, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color=color,
        )
    ax1.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper left", fontsize=8, ncols=4)
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    return _png(fig)


def _config_plot(decisions: list[dict], t0: float, t_end: float) -> str:
    configs = []
    for d in decisions:
        if d.get("event") == "start" and d.get("config"):
            configs.append((d["epoch_s"] - t0, d["config"]))
        elif d.get("event") == "action":
            configs.append((d["epoch_s"] - t0, d["after"]))
    if not configs:
        return ""
    plt = _plt()
    configs.append((t_end - t0, configs[-1][1]))
    xs = [max(c[0], 0.0) for c in configs]
    variants = sorted({c[1]["variant"] for c in configs})
    series = [
        ("instances", [c[1]["instances"] for c in configs], "tab:blue"),
        (
            "max queue delay (µs)",
            [c[1]["max_queue_delay_us"] if c[1]["dynamic_batching"] else 0 for c in configs],
            "tab:orange",
        ),
        (
            "batching: largest\npreferred batch",
            [
                (max(c[1]["preferred_batch_sizes"]) if c[1]["preferred_batch_sizes"] else 1)
                if c[1]["dynamic_batching"]
                else 0
                for c in configs
            ],
            "tab:green",
        ),
        ("variant", [variants.index(c[1]["variant"]) for c in configs], "tab:red"),
    ]
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(series), 1, figsize=(11, 6.5), sharex=True)
    for ax, (name, ys, color) in zip(axes, series, strict=True):
        ax.step(xs, ys, where="post", color=color, linewidth=2)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
        ax.margins(y=0.15)
        ax.grid(alpha=0.3)
    axes[-1].set_yticks(range(len(variants)), variants)
    axes[2].annotate(
        "0 = dynamic batching off, 1 = on without a preferred size",
        (0.01, 0.8),
        xycoords="axes fraction",
        fontsize=7,
        color="gray",
    )
    axes[0].set_title("Serving config over time (the orchestrator's changes)")
    axes[-1].set_xlabel("seconds since the first answer")
    return _png(fig)


def _variant_table(repository: Path | None) -> str:
    if not repository or not (Path(repository) / MANIFEST).exists():
        return ""
    try:
        m = Manifest.read(Path(repository))
    except RepositoryError:
        return ""  # a manifest of another schema: the report goes on without its variant table
    variants = m.variants
    rows = []
    fp32 = variants["fp32"].latency_ms_b32 if "fp32" in variants else None
    for name, v in variants.items():
        b32 = v.latency_ms_b32
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(x))}</td>"
                for x in (
                    name,
                    v.precision,
                    f"{v.top1 * 100:.2f}%"
                    + (f" [{v.top1_ci95[0] * 100:.1f}, {v.top1_ci95[1] * 100:.1f}]" if v.top1_ci95 else ""),
                    f"{v.parameters / 1e6:.2f} M",
                    f"{v.flops / 1e6:.1f}" if v.flops is not None else "—",
                    f"{v.file_bytes / 1e6:.2f} MB",
                    f"{v.latency_ms['batch_1']:.2f}",
                    f"{b32:.2f}",
                    f"{32000 / b32:.0f}",
                    f"{fp32 / b32:.2f}×" if fp32 else "",
                )
            )
            + "</tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "variant",
            "precision",
            "top-1 (held out) [95% CI]",
            "params",
            "MFLOPs",
            "file",
            "ms @1",
            "ms @32",
            "img/s @32",
            "speed vs fp32",
        )
    )
    ds = m.dataset
    note = (
        f"Held-out set: {html.escape(str(ds.get('name')))} ({ds.get('held_out_images')} images). Speeds: "
        f"in-process ONNX Runtime at build time on {html.escape(str(m.host.get('machine', '?')))}."
    )
    return f"<h2>Variants</h2><p>{note}</p><table><tr>{head}</tr>{''.join(rows)}</table>"


def _sweep_section(sweep: dict | None, slo_ms: float | None) -> str:
    if not sweep or not sweep.get("points"):
        return ""
    plt = _plt()
    pts = [p for p in sweep["points"] if p.get("measurement")]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    feasible = [p for p in pts if p["feasible"]]
    infeasible = [p for p in pts if not p["feasible"]]
    for group, color, label in ((feasible, "tab:blue", "within SLO"), (infeasible, "tab:gray", "over SLO")):
        ax.scatter(
            [p["measurement"]["p99_ms"] for p in group],
            [p["measurement"]["throughput_infer_per_s"] for p in group],
            color=color,
            s=22,
            label=label,
            alpha=0.8,
        )
    front = sorted(sweep.get("frontier", []), key=lambda p: p["measurement"]["p99_ms"])
    if front:
        ax.plot(
            [p["measurement"]["p99_ms"] for p in front],
            [p["measurement"]["throughput_infer_per_s"] for p in front],
            color="tab:red",
            marker="o",
            label="Pareto frontier",
        )
    base = [p for p in pts if p.get("baseline")]
    if base:
        ax.scatter(
            [p["measurement"]["p99_ms"] for p in base],
            [p["measurement"]["throughput_infer_per_s"] for p in base],
            marker="s",
            s=90,
            facecolors="none",
            edgecolors="black",
            label="baseline (default config) per concurrency",
        )
    for p in front:
        c = p["config"]
        tag = f"{c['variant']} ×{c['instances']} " + (
            f"q{c['max_queue_delay_us']}µs" if c["dynamic_batching"] else "no-DB"
        )
        ax.annotate(
            f"{tag} c{p['concurrency']}",
            (p["measurement"]["p99_ms"], p["measurement"]["throughput_infer_per_s"]),
            textcoords="offset points",
            xytext=(5, -10),
            fontsize=7,
        )
    best = sweep.get("best")
    if best:
        ax.scatter(
            [best["measurement"]["p99_ms"]],
            [best["measurement"]["throughput_infer_per_s"]],
            marker="*",
            s=220,
            color="gold",
            edgecolors="black",
            label="best within SLO",
        )
    if slo_ms:
        ax.axvline(slo_ms, color="black", linestyle="--", linewidth=1, label=f"SLO {slo_ms:g} ms")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(_plain_formatter())
    ax.xaxis.set_minor_formatter(_plain_formatter(minor=True))
    ax.set_xlabel("p99 latency (ms, log)")
    ax.set_ylabel("throughput (inferences/s)")
    ax.set_title("Sweep: throughput vs p99 latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(x))}</td>"
            for x in (
                p["config"]["variant"],
                p["config"]["instances"],
                p["config"]["max_queue_delay_us"] if p["config"]["dynamic_batching"] else "off",
                ",".join(map(str, p["config"]["preferred_batch_sizes"])) or "-",
                p["concurrency"],
                p["measurement"]["throughput_infer_per_s"],
                p["measurement"]["p99_ms"],
                "yes" if p["measurement"]["stable"] else "no",
            )
        )
        + "</tr>"
        for p in front
    )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("variant", "instances", "queue delay µs", "preferred", "concurrency", "infer/s", "p99 ms", "stable")
    )
    return (
        f"<h2>Sweep frontier</h2>{_png(fig)}<p>{len(pts)} points measured; baseline first. Frontier:</p>"
        f"<table><tr>{head}</tr>{rows}</table>"
    )


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}img{max-width:100%}.bad{color:#b00;font-weight:bold}
.kv td:first-child{font-weight:bold}code{background:#f6f6f6;padding:1px 4px}
"""


def write_report(
    run_dir: Path,
    title: str,
    slo_p99_ms: float | None = None,
    decision_log: Path | None = None,
    repository: Path | None = None,
    sweep: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``run_dir/report.html`` from whatever the run folder holds; returns its path."""
    run_dir = Path(run_dir)
    rows = read_requests(run_dir)
    decisions = read_decisions(decision_log)
    if sweep is None and (run_dir / "sweep.json").exists():
        sweep = json.loads((run_dir / "sweep.json").read_text())
    result = json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").exists() else {}
    parts = [f"<h1>{html.escape(title)}</h1>"]
    kv: dict[str, object] = {"run folder": str(run_dir)}
    if result:
        s = result["summary"]
        kv.update(
            {
                "requests": s.get("requests"),
                "failed requests": s.get("failures"),
                "answers (wrong ones counted apart from errors)": answers(s) if "wrong_answers" in s else None,
                "client p50 / p99 (ms)": f"{s.get('client_p50_ms')} / {s.get('client_p99_ms')}",
                "answered req/s (whole run)": s.get("throughput_req_per_s"),
                "load generator": f"{s.get('mode')}" + (f", {s.get('workers')} workers" if s.get("workers") else ""),
                "load shape": f"{s.get('load_shape') or '-u/-r/-t'}"
                + (" (open loop, req/s)" if s.get("open_loop") else ""),
            }
        )
        if not result.get("valid", True):
            kv["VALIDITY"] = f'<span class="bad">INVALID: {html.escape(result.get("invalid_reason", ""))}</span>'
    t0 = rows[0]["end_epoch_s"] if rows else (decisions[0]["epoch_s"] if decisions else 0.0)
    ws = windows(rows, t0, slo_p99_ms)
    if slo_p99_ms and ws:
        met = sum(1 for w in ws if w["slo_met"])
        kv[f"{WINDOW_S:g}-s windows meeting p99 ≤ {slo_p99_ms:g} ms"] = f"{met}/{len(ws)} ({100 * met / len(ws):.0f}%)"
    acts = _actions(decisions)
    if decisions:
        kv["orchestrator actions"] = (
            ", ".join(f"{i + 1}: {a.get('rule') or a.get('action')}" for i, a in enumerate(acts)) or "none"
        )
    for k, v in (extra or {}).items():
        kv[k] = v
    parts.append(
        '<table class="kv">'
        + "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v if k == 'VALIDITY' else html.escape(str(v))}</td></tr>"
            for k, v in kv.items()
        )
        + "</table>"
    )
    if ws:
        parts.append("<h2>Throughput and latency</h2>" + _timeline_plot(ws, decisions, t0, slo_p99_ms))
    if decisions:
        cfg = _config_plot(decisions, t0, rows[-1]["end_epoch_s"] if rows else decisions[-1]["epoch_s"])
        if cfg:
            parts.append("<h2>Serving config</h2>" + cfg)
        if acts:
            items = "".join(
                f"<li>t={a['epoch_s'] - t0:.0f} s — <b>{html.escape(str(a.get('rule') or a.get('action')))}</b>"
                f"{' (FAILED)' if a['event'] == 'apply-failed' else ''}: {html.escape(str(a.get('reason', '')))}</li>"
                for a in acts
            )
            parts.append(f"<h3>Actions</h3><ol>{items}</ol>")
    parts.append(_variant_table(repository))
    parts.append(_sweep_section(sweep, slo_p99_ms))
    (run_dir / "windows.json").write_text(json.dumps(ws, indent=1) + "\n")
    body = "\n".join(p for p in parts if p)
    out = run_dir / "report.html"
    out.write_text(
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>{body}</body></html>\n"
    )
    return out
