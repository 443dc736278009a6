"""The degradation arms of an experiment plan: routed experts (a shared model, then one
fine-tuned copy per fingerprint group of the training split) and the per-recipe scoring of every
arm on a known-recipe test set, with LR-consistency refinement where an arm asks for it."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from upres.errors import ConfigError
from upres.io.files import atomic_path, atomic_write_bytes


def split_budget(cfg, share: float):
    """(shared-phase config, per-expert budget maker): the arm's time or steps, split."""
    shared = cfg.model_copy(deep=True)
    if cfg.train.time_budget:
        total = cfg.train.budget_seconds()
        shared.train.time_budget = f"{total * (1 - share):.1f}s"
        return shared, lambda n: {"time_budget": f"{max(total * share / n, 1.0):.1f}s"}
    total = cfg.train.iterations
    shared.train.iterations = max(1, int(total * (1 - share)))
    return shared, lambda n: {"iterations": max(1, int(total * share / n))}


def train_split_fingerprint(cfg, path: Path, progress: bool):
    """The fingerprint of the arm's training split (never its validation pairs), kept at ``path``."""
    from upres.degradation.fingerprint import Fingerprint, fingerprint
    from upres.training.data import resolve_splits

    if not path.exists():
        splits = resolve_splits(cfg.data, cfg.train.seed)
        fp, _ = fingerprint(splits.train, cfg.model.scale, cfg.data.cache_dir, progress=progress)
        fp.save(path)
    return Fingerprint.load(path)


def train_experts(cfg, run_dir: Path, budget, progress: bool, lr_scale: float = 0.25) -> Path:
    """One expert per group with at least 2 training pairs, initialized from the arm's shared
    best weights at ``lr_scale`` times the arm's learning rate, and kept only when it beats the
    shared weights on its validation pairs (scored first, as step 0); returns experts.json."""
    from upres.inference.route import write_routes
    from upres.training.loop import train

    fp_path = run_dir / "experts" / "fingerprint.json"
    fp = train_split_fingerprint(cfg, fp_path, progress)
    groups = [g.id for g in fp.groups if g.count >= 2]
    experts = {}
    for g in groups:
        expert = cfg.model_copy(deep=True)
        expert.data.fingerprint, expert.data.groups = str(fp_path), [g]
        expert.init.source, expert.init.strict = str(run_dir / "best.safetensors"), True
        expert.train.lr, expert.train.val_at_start = cfg.train.lr * lr_scale, True
        for key, value in budget(len(groups)).items():
            setattr(expert.train, key, value)
        expert_dir = run_dir / "experts" / f"group{g}"
        if not (expert_dir / "last.safetensors").exists():
            print(f"  expert for group {g} ({fp.groups[g].count} pairs)")
            train(expert, expert_dir, resume="auto", command=["upres", "experiment", "expert", str(g)],
                  progress=progress)
        if _improved(expert_dir / "metrics.jsonl"):
            experts[g] = expert_dir / "best.safetensors"
        else:
            print(f"  expert for group {g} did not beat the shared model on validation: not used")
    write_routes(run_dir / "experts.json", fp_path, run_dir / "best.safetensors", experts)
    return run_dir / "experts.json"


def _improved(metrics: Path) -> bool:
    """Whether a run's validation beat its step-0 score (the weights it started from)."""
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    scores = {r["step"]: r["val_psnr"] for r in records if "val_psnr" in r}
    return 0 in scores and max((v for s, v in scores.items() if s > 0), default=-1e9) > scores[0]


def _predictor(arm_dir: Path, routed: bool):
    from upres.inference.predict import Predictor
    from upres.inference.route import RoutedPredictor
    from upres.inference.upscaler import InferenceOptions

    options = InferenceOptions(backend="torch", dtype="fp32", tile=0)  # as validation: exact
    if routed:
        return RoutedPredictor(arm_dir / "experts.json", "fingerprint", options)
    return Predictor([arm_dir / "best.safetensors"], options)


def _enable_refinement(predictor, cfg, fp_path: Path, progress: bool) -> dict:
    from upres.degradation.refine import Refiner
    from upres.inference.predict import choose_refinement
    from upres.training.data import resolve_splits

    predictor.refiner = Refiner(train_split_fingerprint(cfg, fp_path, progress))
    val = resolve_splits(cfg.data, cfg.train.seed).val
    scored = predictor.validate_files([{"lr": p.lr, "hr": p.hr} for p in val])
    return choose_refinement(predictor.refiner, scored, np.ones(1))


def score_by_recipe(plan, configs: dict, out_dir: Path, data: str | None,
                    progress: bool = True) -> dict[str, Path]:
    """PSNR per recipe of every arm on DATA/test; writes recipes.md, recipes.csv, recipes.png."""
    from upres.degradation.recipes import read_labels
    from upres.inference.predict import rgb_input, to_image
    from upres.io import images
    from upres.scoring import metrics
    from upres.scoring.evaluate import match_by_stem

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
        for f in files:
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
    return _write_recipe_table(by_arm, recipes, notes, out_dir)


def _write_recipe_table(by_arm: dict, recipes: list[str], notes: dict, out_dir: Path) -> dict[str, Path]:
    header = ["arm", *recipes, "all"]
    rows = []
    for name, scores in by_arm.items():
        means = [float(np.mean(scores[r])) for r in recipes]
        rows.append([name, *[f"{m:.2f}" for m in means], f"{np.mean(means):.2f}"])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    atomic_write_bytes(out_dir / "recipes.csv", buf.getvalue().encode())
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    for name, note in notes.items():
        md.append(f"\n{name}: refinement gain on validation by group (dB) "
                  + ", ".join(f"{g}: {v:+.3f}" for g, v in note["gain_by_group"].items())
                  + f"; applied to groups {note['enabled_groups']}")
    atomic_write_bytes(out_dir / "recipes.md", ("\n".join(md) + "\n").encode())
    _plot_recipes(by_arm, recipes, out_dir)
    return {"recipes.md": out_dir / "recipes.md", "recipes.csv": out_dir / "recipes.csv",
            "recipes.png": out_dir / "recipes.png"}


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
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out_dir / "recipes.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
