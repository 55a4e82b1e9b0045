"""Run one benchmark and keep what it printed, with where and when, as ``docs/results/NAME.json``.

    python bench/record.py variants -- python bench/variants.py --runs 7

The benchmark's stdout must be its JSON (each script in bench/ prints exactly that); its stderr passes through.
The record adds the commit (and whether the tree had uncommitted changes), the UTC date, the machine and the exact
command, so docs/benchmarks.md can show each current figure with its provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_PATHS = (".", ":!docs", ":!*.md")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()


def machine() -> dict:
    mem_kb = next(
        (
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        0,
    )
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "gpu": None,
    }


def cpu_times() -> list[int]:
    """The machine's summed CPU times (``/proc/stat``'s ``cpu`` line); empty where there is no procfs."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return []
    return [int(v) for v in first[1:9]] if first and first[0] == "cpu" else []


def steal_share(before: list[int], after: list[int]) -> float | None:
    """The share of the machine's CPU time the hypervisor gave to other guests over the run (``steal``).

    On a shared virtual machine it is capacity the benchmark did not get: a figure measured at 30% steal is not
    one measured at 0%, so the record keeps it beside the result.
    """
    if len(before) < 8 or len(after) < 8:
        return None
    spent = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(spent)
    return round(spent[7] / total, 3) if total > 0 else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", help="results file name, e.g. variants (→ docs/results/variants.json)")
    ap.add_argument(
        "--merge-key",
        default="",
        help="keep this run as one part of docs/results/NAME.json (e.g. one scenario of a suite measured in pieces): "
        "the other parts stay as they are, each with its own commit, date and command",
    )
    argv = sys.argv[1:]
    if "--" in argv:  # options may come after the name: everything before "--" is ours, the rest the command
        cut = argv.index("--")
        args = ap.parse_args(argv[:cut])
        command = argv[cut + 1 :]
    else:
        ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the benchmark command")
        args = ap.parse_args(argv)
        command = args.command
    if not command:
        ap.error("give the benchmark command after --")
    started = time.monotonic()
    date = datetime.now(UTC).isoformat(timespec="seconds")
    # The tree the benchmark ran on: read before it starts, so a commit made while it runs is not credited.
    commit = git("rev-parse", "--short", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS))
    cpu_before = cpu_times()
    proc = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
    steal = steal_share(cpu_before, cpu_times())
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        print(
            f"record: {command[1] if len(command) > 1 else command[0]} printed no JSON; nothing written",
            file=sys.stderr,
        )
        sys.stdout.write(proc.stdout)
        return 1
    record = {
        "benchmark": args.name,
        "commit": commit,
        # code only: docs/ (where this record goes) and the README may change while benchmarks run
        "uncommitted_changes": dirty,
        "date_utc": date,
        "machine": {**machine(), "cpu_steal_share": steal},
        "command": shlex.join(command),
        "exit_code": proc.returncode,
        "wall_s": round(time.monotonic() - started, 1),
        "result": result,
    }
    out = ROOT / "docs" / "results" / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    wall_s = record["wall_s"]
    if args.merge_key:
        parts = {}
        if out.exists():
            try:
                parts = json.loads(out.read_text()).get("parts", {})
            except json.JSONDecodeError:
                print(f"record: {out.relative_to(ROOT)} is not JSON; starting it afresh", file=sys.stderr)
        parts[args.merge_key] = record
        record = {"benchmark": args.name, "parts": dict(sorted(parts.items()))}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"record: {out.relative_to(ROOT)} (exit {proc.returncode}, {wall_s} s)", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
