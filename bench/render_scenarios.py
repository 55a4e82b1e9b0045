"""docs/results/scenarios.json → the markdown docs/benchmarks.md shows for each measured scenario (one ``####``
section per scenario, from its own record: commit, date, machine, command, medians, goals, per-run changes).

    python bench/render_scenarios.py [docs/results/scenarios.json] [--scenario NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ARMS = ("default", "static", "static_base", "orchestrator")


def config_text(c: dict | None) -> str:
    if not c:
        return "none held"
    batching = f"batching {c['max_queue_delay_us']} µs" if c["dynamic_batching"] else "no batching"
    return f"{c['variant']} ×{c['instances']}, {batching}"


def change_text(run: dict) -> str:
    parts = []
    for a in run["orchestrator"]["after_each_change"]:
        secs = "never" if a["seconds_until_slo_holds"] is None else f"{a['seconds_until_slo_holds']:g} s"
        parts.append(f"{a['at_s']:g} s: {secs}/{a['actions']} act")
    return "; ".join(parts)


def steal(machine: dict) -> str:
    """The hypervisor's steal over the run, where the record has it (records before it was kept do not)."""
    share = machine.get("cpu_steal_share")
    return "" if share is None else f" ({share:.0%} of CPU time stolen by the host)"


def render(name: str, record: dict) -> str:
    r = record["result"]["scenarios"][name]
    machine = record["machine"]
    cap = ", ".join(f"{lv['variant']} {lv['rate_per_s']:g}" for lv in r["calibration"]["levels"])
    lines = [
        f"#### {name}",
        "",
        f"Commit `{record['commit']}`, {record['date_utc']} UTC, {machine['cpus']} CPUs{steal(machine)}, "
        f"{record['wall_s']} s. "
        f"Command: `{record['command']}`.",
        "",
        f"{r['about']}. SLO p99 {r['slo_p99_ms']:g} ms, headroom {'on' if r['headroom'] else 'off'}, client batch "
        f"{r['client_batch']}, floor {r['accuracy_floor']:.4f}{', a busy loop on core 0' if r['neighbour'] else ''}"
        f"; load {r['load']}; peak {r['peak_rate_per_s']:g} req/s, base {r['base_rate_per_s']:g} req/s. "
        f"Capacities measured: {cap} req/s.",
        f"Best static at peak: {config_text((r['static_best_at_peak'] or {}).get('config'))}; at base: "
        f"{config_text((r['static_best_at_base'] or {}).get('config'))}. Median of {r['repeats']}.",
        "",
        "| arm | windows meeting SLO | served top-1 (time-weighted) | failed | actions | rollbacks "
        "| generator CPU (of a core) | valid runs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm in ARMS:
        m = r["median"].get(arm)
        if not m:
            continue
        lines.append(
            f"| {arm} | {m['share_meeting_slo']:.0%} | {m['served_top1_time_weighted']:.4f} | "
            f"{m['failed_requests']:g} | {m['actions']:g} | {m['rollbacks']:g} | "
            f"{m['generator_cpu_core_share']:.2f} | {m['generator_valid_runs']}/{r['repeats']} |"
        )
    runs = [run for run in r["runs"] if "orchestrator" in run]
    if runs:
        steps = any(run["orchestrator"]["after_each_change"] for run in runs)
        lines += [
            "",
            "Orchestrator per run — after each change of load (seconds until every later window met the SLO / "
            "actions): " + " | ".join(change_text(run) for run in runs) + "."
            if steps
            else "Orchestrator per run: the load changes continuously (no steps to converge after).",
            "Variants served per run: "
            + " | ".join(" → ".join(run["orchestrator"].get("variants_served", [])) for run in runs)
            + "; missed windows (start, s): "
            + " | ".join(
                ", ".join(f"{t:g}" for t in run["orchestrator"]["missed_windows_start_s"]) or "none" for run in runs
            )
            + ".",
        ]
    if runs and "missed_windows_per_change" in runs[0]["orchestrator"]:
        serving = [
            ", ".join("–" if x is None else f"{x:g} s" for x in run["orchestrator"]["step_to_serving_s"])
            for run in runs
        ]
        missed = [", ".join(map(str, run["orchestrator"]["missed_windows_per_change"])) for run in runs]
        decided = [
            ", ".join("–" if x is None else f"{x:g} s" for x in run["orchestrator"].get("step_to_decision_s", []))
            for run in runs
        ]
        unforced = [len(run["orchestrator"]["missed_after_unforced_reload_start_s"]) for run in runs]
        m = r["median"]["orchestrator"]
        lines += [
            "Missed windows per change of load: " + " | ".join(missed) + "; step to serving (change → the new "
            "config serving, its reload included): "
            + " | ".join(serving)
            + f" (median over steps up {m['step_to_serving_s_median']} s, "
            f"worst {m['step_to_serving_s_worst']} s); of which deciding: "
            + " | ".join(decided)
            + "; missed after a reload the load did not force: "
            + ", ".join(map(str, unforced))
            + ".",
            "Frontier (windows met, served top-1): "
            + ", ".join(r.get("frontier", []))
            + "; the orchestrator is dominated by: "
            + (", ".join(r["dominated_by"]["orchestrator"]) or "none")
            + ".",
        ]
    goals = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in r["goals"].items())
    lines += ["", f"Goals: {goals}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", type=Path, default=Path("docs/results/scenarios.json"))
    ap.add_argument("--scenario", action="append", help="repeatable; default: every measured scenario")
    args = ap.parse_args()
    parts = json.loads(args.path.read_text())["parts"]
    for name in args.scenario or list(parts):
        if name not in parts:
            print(f"{args.path} has no scenario {name!r}; measured: {', '.join(parts)}", file=sys.stderr)
            return 2
        print(render(name, parts[name]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
