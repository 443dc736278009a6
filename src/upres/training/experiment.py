"""The recipe's comparisons as one command: every arm of a plan trains with the same data, seed,
iterations and validation through ``upres.training.loop.train``; arms already finished are skipped, an
interrupted arm resumes from its checkpoint; the results become a table (Markdown and CSV) and a
plot of validation PSNR against iterations."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from upres.errors import ConfigError, TrainingInterrupted, UpresError, listing
from upres.io.files import (
    OutputExistsError,
    atomic_path,
    atomic_write_bytes,
    check_output_folder,
    read_jsonl,
    staged_folder,
)
from upres.io.tables import write_tables
from upres.training.config import Arm, Plan, duration_seconds, load_config, parse_overrides
from upres.training.experts import split_budget, train_experts
from upres.training.loop import train
from upres.training.per_recipe import score_by_recipe


def _dotted(overrides: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]


def arm_config(plan: Plan, arm: Arm, data: str | None, extra: list[str] | None = None):
    """An arm's config: the plan's base, its shared settings, the plan's and the arm's
    overrides, then ``extra`` (the command line's, for every arm)."""
    common = [f"train.iterations={plan.iterations}", f"train.val_every={plan.val_every}",
              f"train.seed={plan.seed}", f"train.checkpoint_every={plan.val_every}"]
    if plan.time_budget:
        common.append(f"train.time_budget={plan.time_budget}")
    overrides = common + _dotted(plan.overrides) + _dotted(arm.overrides) + list(extra or [])
    parse_overrides(overrides)  # fail early on a malformed key
    root = data or plan.data
    return load_config(plan.base, ([f"data.root={json.dumps(str(root))}"] if root else []) + overrides)


def _init_problem(source: str | None) -> str | None:
    """What is wrong with an arm's ``init.source``: a name not installed, or a missing file."""
    from upres.io.pretrained import PRETRAINED, pretrained_available
    from upres.io.published import PUBLISHED, how_to_get, installed_path

    if not source:
        return None
    if source in PRETRAINED:
        return None if pretrained_available(source) else " is not installed (pip install 'upres[pretrained]')"
    if source in PUBLISHED:
        return None if installed_path(source) else f" is not installed ({how_to_get(source)})"
    return None if Path(source).is_file() else ": no such file"


def check_arms(configs: dict) -> None:
    """Before any arm trains: every arm's data folders, fingerprint and initial weights exist,
    and its network can be built from its settings (on PyTorch's meta device: no memory)."""
    problems = []
    for name, cfg in configs.items():
        if why := _init_problem(cfg.init.source):
            problems.append(f"arm {name}: init.source {cfg.init.source}{why}")
        for key in ("root", "extra_hr"):
            folder = getattr(cfg.data, key)
            if folder and not Path(folder).is_dir():
                problems.append(f"arm {name}: data.{key} {folder}: no such folder")
        if cfg.data.fingerprint and not Path(cfg.data.fingerprint).is_file():
            problems.append(f"arm {name}: data.fingerprint {cfg.data.fingerprint}: no such file")
        if why := _model_problem(cfg):
            problems.append(f"arm {name}: model: {why}")
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in the plan:" + listing(problems))


def _model_problem(cfg) -> str | None:
    """Why an arm's network cannot be built from its settings, or None (built on the meta device
    where the family allows it, else on the CPU)."""
    from upres.models.registry import build_model
    from upres.training.fits import meta_model

    try:
        if meta_model(cfg.model.arch, cfg.model.hparams()) is None:
            build_model(cfg.model.arch, cfg.model.hparams())
    except (UpresError, TypeError, ValueError) as err:
        return str(err)[:300]
    return None


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
    for record in read_jsonl(run_dir / "metrics.jsonl"):
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


EXPERIMENT_FILES = ("plan.yaml", "arms", "results")


def check_experiment_folder(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """A folder holding an experiment continues only with ``--resume``, or starts over with
    ``--overwrite`` (its arms and results are removed); other files are left alone."""
    check_output_folder(out_dir, overwrite=True)
    held = [out_dir / n for n in EXPERIMENT_FILES if (out_dir / n).exists()]
    if resume or not held:
        if not resume and out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
            raise OutputExistsError(f"{out_dir}: the folder holds other files; choose another "
                                    "--out or pass --overwrite")
        return
    if not overwrite:
        raise OutputExistsError(f"{out_dir} holds an experiment; pass --resume to continue it "
                                "(finished arms are kept) or --overwrite to start over")
    for path in held:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def run_plan(plan: Plan, out_dir: str | Path, data: str | None = None, progress: bool = True,
             resume: bool = False, overwrite: bool = False,
             overrides: list[str] | None = None) -> dict[str, Path]:
    """Train every arm (with ``resume``, finished arms are kept and an interrupted one
    resumes), then write ``OUT/results/`` (table.md, table.csv, psnr.png) as one folder."""
    out_dir = Path(out_dir)
    configs = {arm.name: arm_config(plan, arm, data, overrides) for arm in plan.arms}
    check_arms(configs)  # every arm checked before the first trains
    check_experiment_folder(out_dir, resume, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "plan.yaml", yaml.safe_dump(plan.model_dump(), sort_keys=False).encode())
    results = {}
    eta = PlanClock(sum(not arm.reuse for arm in plan.arms), plan)
    for i, arm in enumerate(plan.arms, start=1):
        if arm.reuse:
            print(f"arm {i}/{len(plan.arms)} {arm.name}: the weights of {arm.reuse}")
            results[arm.name] = results[arm.reuse]
            continue
        try:
            results[arm.name] = _run_arm(plan, arm, configs, out_dir, progress,
                                         f"{i}/{len(plan.arms)}")
        except TrainingInterrupted:
            raise TrainingInterrupted(f"interrupted in arm {arm.name}; run the same command with "
                                      f"--resume (and --out {out_dir}) to continue") from None
        eta.arm_done()
    with staged_folder(out_dir / "results", overwrite=True) as staging:
        written = write_results(plan, results, out_dir, staging)
        if plan.score_recipes:
            written |= score_by_recipe(plan, configs, out_dir, data, progress, staging)
        written["index.html"] = write_index(plan, staging, out_dir)
    return {name: out_dir / "results" / name for name in written}


class PlanClock:
    """The plan's ETA, said after each arm from the pace of the arms trained in this process
    (arms differ in speed, so it is an estimate and says so); a warning past a day."""

    def __init__(self, arms: int, plan: Plan) -> None:
        self.left, self.last, self.trained, self.spent = arms, time.monotonic(), 0, 0.0
        if plan.time_budget:
            total = duration_seconds(plan.time_budget) * arms
            print(f"plan: {arms} arms of {plan.time_budget} each, ~{_span(total)} of training")

    def arm_done(self) -> None:
        now, self.left = time.monotonic(), self.left - 1
        if now - self.last > 5:  # an arm that trained here, not one kept from before
            self.trained, self.spent = self.trained + 1, self.spent + now - self.last
        self.last = now
        if not self.left or not self.trained:
            return
        eta = self.spent / self.trained * self.left
        print(f"{self.left} arm(s) left; ETA ~{_span(eta)} at the pace so far")
        if eta > 24 * 3600:
            print(f"warning: the plan needs ~{eta / 3600:,.0f} more hours on this device; size "
                  "it down with KEY=VALUE overrides (train.iterations=..., train.time_budget=...)")


def _span(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{max(minutes, 1)}m"


def _run_arm(plan: Plan, arm: Arm, configs: dict, out_dir: Path, progress: bool,
             position: str) -> ArmResult:
    cfg = configs[arm.name]
    run_dir = out_dir / "arms" / arm.name
    if arm.experts:
        cfg, expert_budget = split_budget(cfg, plan.expert_share)
    if (run_dir / "last.safetensors").exists():
        print(f"arm {position} {arm.name}: finished earlier, kept")
    else:
        limit = f"for {plan.time_budget}" if plan.time_budget else f"{plan.iterations} iterations"
        print(f"arm {position} {arm.name}: training {limit}")
        result = train(cfg, run_dir, resume="auto", command=["upres", "experiment", arm.name],
                       progress=progress)
        if result.init_report:
            atomic_write_bytes(run_dir / "init_report.json",
                               (json.dumps(result.init_report, indent=1) + "\n").encode())
    if arm.experts:
        train_experts(configs[arm.name], run_dir, expert_budget, progress, plan.expert_lr)
    return read_metrics(run_dir)


def write_results(plan: Plan, results: dict[str, ArmResult], out_dir: Path,
                  dest: Path) -> dict[str, Path]:
    """The table (Markdown, CSV) and the plot of the arms in ``out_dir``, written to ``dest``."""
    header, rows = (_budget_table if plan.time_budget else _step_table)(plan, results, out_dir)
    bicubic = results[plan.arms[0].name].bicubic
    if bicubic is not None:  # the same validation images upsampled by bicubic, for scale
        cells = [f"{bicubic:.3f}" if h.startswith(("psnr", "val PSNR", "best")) else ""
                 for h in header[1:]]
        rows.append(["(bicubic)", *cells])
    written = write_tables(dest, "table", header, rows)
    _plot(plan, results, out_dir.name, dest)
    return written | {"psnr.png": dest / "psnr.png"}


def write_index(plan: Plan, dest: Path, out_dir: Path) -> Path:
    """``results/index.html``: the table, the plots (inline) and a link to each arm's page."""
    import base64
    import html

    def inline(name: str) -> str:
        data = base64.b64encode((dest / name).read_bytes()).decode()
        return f"<img alt='{name}' src='data:image/png;base64,{data}'>"

    table = (dest / "table.csv").read_text().splitlines()
    cells = [row.split(",") for row in table]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
    arms = "".join(f"<li><a href='../arms/{a.name}/report.html'>{html.escape(a.name)}</a></li>"
                   for a in plan.arms if (out_dir / "arms" / a.name / "report.html").exists())
    recipes = inline("recipes.png") if (dest / "recipes.png").exists() else ""
    page = ("<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
            "content='width=device-width,initial-scale=1'><title>upres experiment</title><style>"
            "body{font-family:system-ui,sans-serif;margin:0 auto;padding:1em;max-width:1100px}"
            "table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:3px 8px}"
            ".wrap{overflow-x:auto}img{max-width:100%;height:auto}</style></head><body>"
            f"<h1>{html.escape(out_dir.name)}</h1><div class=wrap><table><tr>{head}</tr>{rows}"
            f"</table></div>{inline('psnr.png')}{recipes}<h2>Arms</h2><ul>{arms}</ul></body></html>")
    atomic_write_bytes(dest / "index.html", page.encode())
    return dest / "index.html"


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


def _plot(plan: Plan, results: dict[str, ArmResult], title: str, dest: Path) -> None:
    """PSNR against steps; with a time budget, against training time and against size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if plan.time_budget else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    styles = [(m, d) for d in ("-", "--", ":") for m in ("o", "s", "^", "D", "v", "x")]
    for i, arm in enumerate(plan.arms):  # marker and dash differ, so identical arms both show
        r = results[arm.name]
        xs = sorted(r.psnr)
        times = [r.seconds.get(s) for s in xs]
        use_time = plan.time_budget and all(t is not None for t in times)
        marker, dash = styles[i % len(styles)]
        ax.plot([t / 60 for t in times] if use_time else xs, [r.psnr[s] for s in xs],
                marker=marker, ls=dash, alpha=0.85, label=arm.name)
    bicubic = results[plan.arms[0].name].bicubic
    if bicubic is not None:
        ax.axhline(bicubic, color="k", lw=1, ls="--", label=f"bicubic {bicubic:.2f}")
    ax.set_xlabel("training minutes" if plan.time_budget else "iteration")
    ax.set_ylabel("validation PSNR (dB)")
    budget = f", {plan.time_budget} each" if plan.time_budget else ""
    ax.set_title(f"{title} (base {Path(plan.base).stem}): {len(plan.arms)} arms, "
                 f"seed {plan.seed}{budget}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
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
    with atomic_path(dest / "psnr.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
