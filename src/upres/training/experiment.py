"""The recipe's comparisons as one command: every arm of a plan trains with the same data, seed,
iterations and validation through ``upres.training.loop.train``; arms already finished are skipped, an
interrupted arm resumes from its checkpoint; the results become a table (Markdown and CSV) and a
plot of validation PSNR against iterations."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from upres.io.files import atomic_path, atomic_write_bytes
from upres.io.tables import write_tables
from upres.training.config import Arm, Plan, load_config, parse_overrides
from upres.training.experts import split_budget, train_experts
from upres.training.loop import train
from upres.training.per_recipe import score_by_recipe


def _dotted(overrides: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]


def arm_config(plan: Plan, arm: Arm, data: str | None):
    common = [f"train.iterations={plan.iterations}", f"train.val_every={plan.val_every}",
              f"train.seed={plan.seed}", f"train.checkpoint_every={plan.val_every}"]
    if plan.time_budget:
        common.append(f"train.time_budget={plan.time_budget}")
    overrides = common + _dotted(plan.overrides) + _dotted(arm.overrides)
    parse_overrides(overrides)  # fail early on a malformed key
    root = data or plan.data
    return load_config(plan.base, overrides + ([f"data.root={root}"] if root else []))


@dataclass
class ArmResult:
    psnr: dict[int, float]  # validation PSNR by step
    rate: float  # median training speed (it/s) after the first window
    bicubic: float | None  # bicubic PSNR of the same validation images
    seconds: dict[int, float] = field(default_factory=dict)  # training seconds at each validation
    params: int | None = None


def read_metrics(run_dir: Path) -> ArmResult:
    """An arm's results from its ``metrics.jsonl``."""
    result = ArmResult({}, float("nan"), None)
    rates = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "val_psnr" in record:
            result.psnr[record["step"]] = record["val_psnr"]
            result.bicubic = record.get("bicubic_psnr", result.bicubic)
            if "train_seconds" in record:
                result.seconds[record["step"]] = record["train_seconds"]
        if "it_per_s" in record:
            rates.append(record["it_per_s"])
        result.params = record.get("params", result.params)
    result.rate = float(np.median(rates[1:] or rates)) if rates else float("nan")
    return result


def run_plan(plan: Plan, out_dir: str | Path, data: str | None = None,
             progress: bool = True) -> dict[str, Path]:
    """Train every arm (skipping finished ones), then write table.md, table.csv and psnr.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "plan.yaml", yaml.safe_dump(plan.model_dump(), sort_keys=False).encode())
    results = {}
    configs = {arm.name: arm_config(plan, arm, data) for arm in plan.arms}  # every arm checked first
    for arm in plan.arms:
        if arm.reuse:
            print(f"arm {arm.name}: the weights of {arm.reuse}")
            results[arm.name] = results[arm.reuse]
            continue
        cfg = configs[arm.name]
        run_dir = out_dir / "arms" / arm.name
        if arm.experts:
            cfg, expert_budget = split_budget(cfg, plan.expert_share)
        if (run_dir / "last.safetensors").exists():
            print(f"arm {arm.name}: finished earlier, kept")
        else:
            print(f"arm {arm.name}: training {plan.iterations} iterations")
            result = train(cfg, run_dir, resume="auto", command=["upres", "experiment", arm.name],
                           progress=progress)
            if result.init_report:
                atomic_write_bytes(run_dir / "init_report.json",
                                   (json.dumps(result.init_report, indent=1) + "\n").encode())
        if arm.experts:
            train_experts(configs[arm.name], run_dir, expert_budget, progress, plan.expert_lr)
        results[arm.name] = read_metrics(run_dir)
    written = write_results(plan, results, out_dir)
    if plan.score_recipes:
        written |= score_by_recipe(plan, configs, out_dir, data, progress)
    return written


def write_results(plan: Plan, results: dict[str, ArmResult], out_dir: Path) -> dict[str, Path]:
    header, rows = (_budget_table if plan.time_budget else _step_table)(plan, results, out_dir)
    bicubic = results[plan.arms[0].name].bicubic
    if bicubic is not None:  # the same validation images upsampled by bicubic, for scale
        cells = [f"{bicubic:.3f}" if h.startswith(("psnr", "val PSNR", "best")) else ""
                 for h in header[1:]]
        rows.append(["(bicubic)", *cells])
    written = write_tables(out_dir, "table", header, rows)
    _plot(plan, results, out_dir)
    return written | {"psnr.png": out_dir / "psnr.png"}


def _init_note(out_dir: Path, arm: Arm) -> str:
    init_file = out_dir / "arms" / arm.name / "init_report.json"
    if not init_file.exists():
        return ""
    rep = json.loads(init_file.read_text())
    return f"{rep['source']}: {len(rep['loaded'])} loaded, {len(rep['skipped'])} kept"


def _step_table(plan: Plan, results: dict[str, ArmResult], out_dir: Path):
    """Arms at equal steps: PSNR at the reported steps, speed and slow-down."""
    steps = plan.report_at or sorted({s for r in results.values() for s in r.psnr})
    base_name = plan.arms[0].name
    base_rate = results[base_name].rate
    header = ["arm", *[f"psnr@{s}" for s in steps], "it/s", "slow-down vs " + base_name, "init"]
    rows = []
    for arm in plan.arms:
        r = results[arm.name]
        rows.append([arm.name, *[f"{r.psnr[s]:.3f}" if s in r.psnr else "" for s in steps],
                     f"{r.rate:.2f}", f"{base_rate / r.rate:.2f}x", _init_note(out_dir, arm)])
    return header, rows


def _budget_table(plan: Plan, results: dict[str, ArmResult], out_dir: Path):
    """Arms at equal time: the last and best PSNR, steps reached, speed and size."""
    header = ["arm", "arch", "params (M)", "steps", "it/s", "val PSNR (last)", "best", "init"]
    rows = []
    for arm in plan.arms:
        r = results[arm.name]
        arch = arm_config(plan, arm, None).model.arch
        last = max(r.psnr) if r.psnr else None
        rows.append([arm.name, arch, f"{r.params / 1e6:.3f}" if r.params else "",
                     str(last or ""), f"{r.rate:.2f}",
                     f"{r.psnr[last]:.3f}" if last else "",
                     f"{max(r.psnr.values()):.3f}" if r.psnr else "", _init_note(out_dir, arm)])
    return header, rows


def _plot(plan: Plan, results: dict[str, ArmResult], out_dir: Path) -> None:
    """PSNR against steps; with a time budget, against training time and against size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if plan.time_budget else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    for arm in plan.arms:
        r = results[arm.name]
        xs = sorted(r.psnr)
        times = [r.seconds.get(s) for s in xs]
        use_time = plan.time_budget and all(t is not None for t in times)
        ax.plot([t / 60 for t in times] if use_time else xs, [r.psnr[s] for s in xs], marker="o",
                label=arm.name)
    ax.set_xlabel("training minutes" if plan.time_budget else "iteration")
    ax.set_ylabel("validation PSNR (dB)")
    budget = f", {plan.time_budget} each" if plan.time_budget else ""
    ax.set_title(f"{out_dir.name} (base {Path(plan.base).stem}): {len(plan.arms)} arms, "
                 f"seed {plan.seed}{budget}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if plan.time_budget:
        ax = axes[0][1]
        for arm in plan.arms:
            r = results[arm.name]
            if r.params and r.psnr:
                ax.scatter([r.params / 1e6], [r.psnr[max(r.psnr)]], s=40)
                ax.annotate(arm.name, (r.params / 1e6, r.psnr[max(r.psnr)]), fontsize=8,
                            xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("parameters (millions, log)")
        ax.set_ylabel("validation PSNR at the budget (dB)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_dir / "psnr.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
