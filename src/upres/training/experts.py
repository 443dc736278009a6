"""The experts arm of an experiment plan: a shared model, then one fine-tuned copy per
fingerprint group of the arm's training split, each kept only where it beats the shared model on
its validation pairs, written as an ``experts.json`` that ``upres predict --experts`` routes."""

from __future__ import annotations

from pathlib import Path

from upres.degradation.fingerprint import Fingerprint, fingerprint
from upres.inference.route import write_routes
from upres.io.files import read_jsonl
from upres.training.config import Config
from upres.training.data import resolve_splits
from upres.training.loop import train


def split_budget(cfg: Config, share: float):
    """(shared-phase config, per-expert budget maker): the arm's time or steps, split."""
    shared = cfg.model_copy(deep=True)
    if cfg.train.time_budget:
        total = cfg.train.budget_seconds()
        shared.train.time_budget = f"{total * (1 - share):.1f}s"
        return shared, lambda n: {"time_budget": f"{max(total * share / n, 1.0):.1f}s"}
    total = cfg.train.iterations
    shared.train.iterations = max(1, int(total * (1 - share)))
    return shared, lambda n: {"iterations": max(1, int(total * share / n))}


def train_split_fingerprint(cfg: Config, path: Path, progress: bool) -> Fingerprint:
    """The fingerprint of the arm's training split (never its validation pairs), kept at ``path``."""
    if not path.exists():
        splits = resolve_splits(cfg.data, cfg.train.seed)
        fp, _ = fingerprint(splits.train, cfg.model.scale, cfg.data.cache_dir, progress=progress)
        fp.save(path)
    return Fingerprint.load(path)


def train_experts(cfg: Config, run_dir: Path, budget, progress: bool, lr_scale: float = 0.25) -> Path:
    """One expert per group with at least 2 training pairs, initialized from the arm's shared
    best weights at ``lr_scale`` times the arm's learning rate, and kept only when it beats the
    shared weights on its validation pairs (scored first, as step 0); returns experts.json."""
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
    records = read_jsonl(metrics)
    scores = {r["step"]: r["val_psnr"] for r in records if "val_psnr" in r}
    return 0 in scores and max((v for s, v in scores.items() if s > 0), default=-1e9) > scores[0]
