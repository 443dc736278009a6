"""Every arm of a plan scored per LR recipe on a known-recipe test set (``upres make-set``), with
LR-consistency refinement where an arm asks for it: ``recipes.md``, ``recipes.csv`` and a plot of
each arm's gain over bicubic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from upres.degradation.recipes import read_labels
from upres.degradation.refine import Refiner
from upres.errors import ConfigError
from upres.inference.ensemble import Predictor, choose_refinement, rgb_input, to_image
from upres.inference.route import RoutedPredictor
from upres.inference.upscaler import InferenceOptions
from upres.io import images
from upres.io.files import atomic_path
from upres.io.tables import write_tables
from upres.scoring import metrics
from upres.scoring.evaluate import match_by_stem
from upres.training.data import resolve_splits
from upres.training.experts import train_split_fingerprint


def _predictor(arm_dir: Path, routed: bool) -> Predictor:
    options = InferenceOptions(backend="torch", dtype="fp32", tile=0)  # as validation: exact
    if routed:
        return RoutedPredictor(arm_dir / "experts.json", "fingerprint", options)
    return Predictor([arm_dir / "best.safetensors"], options)


def _enable_refinement(predictor: Predictor, cfg, fp_path: Path, progress: bool) -> dict:
    predictor.refiner = Refiner(train_split_fingerprint(cfg, fp_path, progress))
    val = resolve_splits(cfg.data, cfg.train.seed).val
    scored = predictor.validate_files([{"lr": p.lr, "hr": p.hr} for p in val])
    return choose_refinement(predictor.refiner, scored, np.ones(1))


def score_by_recipe(plan, configs: dict, out_dir: Path, data: str | None,
                    progress: bool = True, dest: Path | None = None) -> dict[str, Path]:
    """PSNR per recipe of every arm on DATA/test; writes recipes.md, recipes.csv, recipes.png."""
    root = Path(data or plan.data)
    labels = read_labels(root, "test")
    if not labels:
        raise ConfigError(f"score_recipes: {root / 'recipes.json'} has no test recipes "
                          "(build the set with `upres make-set`)")
    files = match_by_stem({"lr": root / "test" / "lr", "hr": root / "test" / "hr"})
    recipes = sorted(set(labels.values()))
    by_arm = {name: {r: [] for r in recipes} for name in ["bicubic", *(a.name for a in plan.arms)]}
    notes = {}
    arms = {a.name: a for a in plan.arms}
    scale = next(iter(configs.values())).model.scale  # border cut before scoring, as validation
    for arm in plan.arms:
        source = arms[arm.reuse] if arm.reuse else arm
        arm_dir = out_dir / "arms" / source.name
        predictor = _predictor(arm_dir, source.experts)
        if arm.refine:
            fp_path = (arm_dir / "experts" / "fingerprint.json" if source.experts
                       else out_dir / "arms" / arm.name / "fingerprint-train.json")
            notes[arm.name] = _enable_refinement(predictor, configs[source.name], fp_path, progress)
        for f in tqdm(files, desc=f"scoring {arm.name} per recipe", unit="img", disable=not progress):
            lr, hr = images.read_image(f["lr"]), images.read_image(f["hr"])
            rgb = rgb_input(lr, f["lr"])
            out = predictor.predict_float(rgb)[0]
            if predictor.refiner is not None:
                out = predictor.refiner(out, rgb)
            recipe = labels[f["lr"].stem]
            by_arm[arm.name][recipe].append(metrics.psnr(to_image(out, hr), hr, scale))
            if arm is plan.arms[0]:
                by_arm["bicubic"][recipe].append(
                    metrics.psnr(metrics.bicubic_upscale(lr, scale), hr, scale))
    return _write_recipe_table(by_arm, recipes, notes, dest or out_dir)


def _write_recipe_table(by_arm: dict, recipes: list[str], notes: dict, out_dir: Path) -> dict[str, Path]:
    header = ["arm", *recipes, "all"]
    rows = []
    for name, scores in by_arm.items():
        means = [float(np.mean(scores[r])) for r in recipes]
        rows.append([name, *[f"{m:.2f}" for m in means], f"{np.mean(means):.2f}"])
    notes = [f"{name}: refinement gain on validation by group (dB) "
             + ", ".join(f"{g}: {v:+.3f}" for g, v in note["gain_by_group"].items())
             + f"; applied to groups {note['enabled_groups']}" for name, note in notes.items()]
    written = write_tables(out_dir, "recipes", header, rows, notes)
    _plot_recipes(by_arm, recipes, out_dir)
    return written | {"recipes.png": out_dir / "recipes.png"}


def _plot_recipes(by_arm: dict, recipes: list[str], out_dir: Path) -> None:
    """Each arm's PSNR gain over bicubic, per recipe and overall."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in by_arm if a != "bicubic"]
    cols = [*recipes, "all"]
    base = [float(np.mean(by_arm["bicubic"][r])) for r in recipes]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(cols) * max(1, len(arms)) / 3), 4.5))
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        gains = [float(np.mean(by_arm[arm][r])) - b for r, b in zip(recipes, base)]
        gains.append(float(np.mean(gains)))
        ax.bar(np.arange(len(cols)) + (i - (len(arms) - 1) / 2) * width, gains, width, label=arm)
    ax.set_xticks(np.arange(len(cols)), cols)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("PSNR gain over bicubic (dB)")
    ax.set_title("held-out test pairs, per LR recipe")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the bars
    fig.tight_layout()
    with atomic_path(out_dir / "recipes.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
