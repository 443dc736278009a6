"""A shipped experiment plan as a benchmark: runs ``upres experiment PLAN`` and records each arm's
row of ``OUT/results/table.csv`` (validation PSNR at the plan's iterations, speed, init) in
``benchmarks/results/experiment-PLAN.jsonl``, so the docs' experiment tables come from runs.

    python benchmarks/bench_experiment.py levers-cpu --data ../shared/data/minicomp [KEY=VALUE ...]

Run it alone: two processes on these 2 cores slow each other down."""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

import records


def number(text: str):
    """A table cell as a number where it is one (``12.3``, ``1.60x``), else the text."""
    try:
        return float(text.rstrip("x"))
    except ValueError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, help="default: bench-experiment-PLAN")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE for every arm")
    args = parser.parse_args()
    out = args.out or Path(f"bench-experiment-{args.plan}")
    subprocess.run([sys.executable, "-m", "upres.cli", "experiment", args.plan, "--data", args.data,
                    "--out", str(out), "--resume", *args.overrides], check=True)
    with open(out / "results" / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    name = next(iter(rows[0]))  # the first column names the arm
    for row in rows:
        figures = {k: number(v) for k, v in row.items() if k != name and v != ""}
        records.append(f"experiment-{args.plan}", {"arm": row[name]}, figures,
                       note=" ".join(args.overrides))


if __name__ == "__main__":
    main()
