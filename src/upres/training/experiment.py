"""The recipe's comparisons as one command: every arm of a plan trains with the same data, seed,
iterations and validation through ``upres.training.loop.train``; arms already finished are skipped, an
interrupted arm resumes from its checkpoint; the results become a table (Markdown and CSV) and a
plot of validation PSNR against iterations."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import yaml

from upres.io.files import atomic_path, atomic_write_bytes
from upres.training.config import Arm, Plan, load_config, parse_overrides
from upres.training.loop import train


def _dotted(overrides: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]


def arm_config(plan: Plan, arm: Arm, data: str | None):
    common = [f"train.iterations={plan.iterations}", f"train.val_every={plan.val_every}",
              f"train.seed={plan.seed}", f"train.checkpoint_every={plan.val_every}"]
    overrides = common + _dotted(plan.overrides) + _dotted(arm.overrides)
    parse_overrides(overrides)  # fail early on a malformed key
    root = data or plan.data
    return load_config(plan.base, overrides + ([f"data.root={root}"] if root else []))


def read_metrics(run_dir: Path) -> tuple[dict[int, float], float, float | None]:
    """Validation PSNR by step, the median training speed (it/s) after the first window, and
    the bicubic PSNR of the same validation images."""
    psnr, rates, bicubic = {}, [], None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "val_psnr" in record:
            psnr[record["step"]] = record["val_psnr"]
            bicubic = record.get("bicubic_psnr", bicubic)
        if "it_per_s" in record:
            rates.append(record["it_per_s"])
    return psnr, float(np.median(rates[1:] or rates)) if rates else float("nan"), bicubic


def run_plan(plan: Plan, out_dir: str | Path, data: str | None = None,
             progress: bool = True) -> dict[str, Path]:
    """Train every arm (skipping finished ones), then write table.md, table.csv and psnr.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "plan.yaml", yaml.safe_dump(plan.model_dump(), sort_keys=False).encode())
    results = {}
    for arm in plan.arms:
        cfg = arm_config(plan, arm, data)
        run_dir = out_dir / "arms" / arm.name
        if (run_dir / "last.safetensors").exists():
            print(f"arm {arm.name}: finished earlier, kept")
        else:
            print(f"arm {arm.name}: training {plan.iterations} iterations")
            result = train(cfg, run_dir, resume="auto", command=["upres", "experiment", arm.name],
                           progress=progress)
            if result.init_report:
                atomic_write_bytes(run_dir / "init_report.json",
                                   (json.dumps(result.init_report, indent=1) + "\n").encode())
        results[arm.name] = read_metrics(run_dir)
    return write_results(plan, results, out_dir)


def write_results(plan: Plan, results: dict[str, tuple[dict[int, float], float, float | None]],
                  out_dir: Path) -> dict[str, Path]:
    steps = plan.report_at or sorted({s for psnr, _, _ in results.values() for s in psnr})
    base_name = plan.arms[0].name
    base_rate = results[base_name][1]
    header = ["arm", *[f"psnr@{s}" for s in steps], "it/s", "slow-down vs " + base_name, "init"]
    rows = []
    for arm in plan.arms:
        psnr, rate, _ = results[arm.name]
        init_file = out_dir / "arms" / arm.name / "init_report.json"
        init = ""
        if init_file.exists():
            rep = json.loads(init_file.read_text())
            init = f"{rep['source']}: {len(rep['loaded'])} loaded, {len(rep['skipped'])} kept"
        rows.append([arm.name, *[f"{psnr[s]:.3f}" if s in psnr else "" for s in steps],
                     f"{rate:.2f}", f"{base_rate / rate:.2f}x", init])
    bicubic = results[base_name][2]
    if bicubic is not None:  # the same validation images upsampled by bicubic, for scale
        rows.append(["(bicubic)", *[f"{bicubic:.3f}"] * len(steps), "", "", ""])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    atomic_write_bytes(out_dir / "table.csv", buf.getvalue().encode())
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    atomic_write_bytes(out_dir / "table.md", ("\n".join(md) + "\n").encode())

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm in plan.arms:
        psnr = results[arm.name][0]
        ax.plot(sorted(psnr), [psnr[s] for s in sorted(psnr)], marker="o", label=arm.name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation PSNR (dB)")
    ax.set_title(f"{out_dir.name} (base {Path(plan.base).stem}): {len(plan.arms)} arms, "
                 f"seed {plan.seed}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out_dir / "psnr.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return {"table.md": out_dir / "table.md", "table.csv": out_dir / "table.csv",
            "psnr.png": out_dir / "psnr.png"}
