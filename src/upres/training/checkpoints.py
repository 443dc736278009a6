"""Training checkpoints: everything an exact resume needs (model, EMA, optimiser, schedule,
scaler, RNG, step, the config), written atomically and pruned; read back with tensors only
(``weights_only=True``, never arbitrary pickles). Weights formats for users live in
``upres.io.weights``."""

from __future__ import annotations

import math
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from upres.errors import CheckpointError, excerpt
from upres.io.files import atomic_path, remove_stale_temporaries
from upres.io.weights import pickled_global, torch_load_problem
from upres.io.yamlfile import parse_yaml
from upres.training.config import Config, dump_config

REQUIRED = {"step", "model", "optimizer", "scheduler", "scaler", "rng_cpu"}


@dataclass
class TrainState:
    """Everything a checkpoint holds, plus how the forward pass runs."""

    model: nn.Module
    ema: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype
    device: torch.device
    step: int = 0
    best_psnr: float = -math.inf
    skipped: int = 0
    last_val: dict = field(default_factory=dict)
    started: float = 0.0  # time.monotonic() when this process began training
    deadline: float | None = None  # time.monotonic() at which train.time_budget is spent
    init_report: dict = field(default_factory=dict)
    compiled: bool | None = None  # train.compile: None until checked against eager

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and exported: the EMA copy where there is one."""
        return self.ema if self.ema is not None else self.model


def checkpoint_folder(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(checkpoint_folder(run_dir).glob("step_*.pt"))
    return found[-1] if found else None


def latest_step(run_dir: Path) -> int:
    """The step of a run's latest checkpoint (named by it), 0 where it has none."""
    path = latest_checkpoint(run_dir)
    return int(path.stem.split("_")[1]) if path else 0


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's contents (tensors only, never arbitrary pickles), or a named error."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: refused: the file holds pickled objects other than tensors, "
                              f"which could run code{pickled_global(err)}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({torch_load_problem(err)})") from None
    missing = REQUIRED - set(saved) if isinstance(saved, dict) else REQUIRED
    if missing:
        raise CheckpointError(f"{path}: not an upres checkpoint (missing {', '.join(sorted(missing))})")
    return saved


def find_resumable(run_dir: Path, resume: str, main: bool = True) -> tuple[Path, dict] | None:
    """The checkpoint to resume from: a path must be readable; ``auto`` takes the newest intact
    one of the run folder, passing over damaged ones with a warning (None in a new run)."""
    if resume != "auto":
        return Path(resume), read_checkpoint(Path(resume))
    if main and checkpoint_folder(run_dir).is_dir():  # a kill mid-write leaves a temp file
        remove_stale_temporaries(checkpoint_folder(run_dir))
    candidates = sorted(checkpoint_folder(run_dir).glob("step_*.pt"), reverse=True)
    for candidate in candidates:
        try:
            return candidate, read_checkpoint(candidate)
        except CheckpointError as err:
            if main:
                print(f"warning: {err}; trying an older checkpoint", file=sys.stderr)
    if candidates:
        raise CheckpointError(f"{checkpoint_folder(run_dir)}: no intact checkpoint to resume "
                              "from; move the folder away to start afresh")
    return None


def restore(state: TrainState, saved: dict, path: Path, cfg: Config, main: bool = True) -> None:
    """Model, EMA, optimiser, schedule, scaler, RNG and step from a checkpoint (the data order
    follows the step)."""
    check_same_model(saved, path, cfg, main)
    state.model.load_state_dict(saved["model"])
    if state.ema is not None:
        state.ema.load_state_dict(saved["ema"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["rng_cpu"])
    state.step, state.best_psnr = int(saved["step"]), float(saved["best_psnr"])
    if main:
        print(f"resumed from {path} at step {state.step}", file=sys.stderr)


# Keys a resumed run may change without a word: how long, how often, where.
EXTENDABLE = ("train.iterations", "train.time_budget", "train.val_every", "train.checkpoint_every",
              "train.log_every", "train.keep_checkpoints", "train.device", "data.workers",
              "data.cache_dir", "data.val_max_images")


def _flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def config_differences(saved: str, cfg: Config) -> list[str]:
    """``key: checkpoint value -> current value`` for every differing config key."""
    old = _flat(parse_yaml(saved, "the checkpoint's saved config") or {})
    new = _flat(parse_yaml(dump_config(cfg), "the config"))
    return [f"{k}: {excerpt(old.get(k))} -> {excerpt(new.get(k))}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def check_same_model(saved: dict, path: Path, cfg: Config, main: bool) -> None:
    """A checkpoint of another network is refused in one line naming the differing keys; other
    differences (the schedule, the data) are named in a warning and the current values used."""
    if "config" not in saved:
        return
    diffs = config_differences(saved["config"], cfg)
    model = [d for d in diffs if d.startswith("model.")]
    if model:
        raise CheckpointError(f"{path} holds another network than the config describes ("
                              + "; ".join(model) + "); resume with the run's own config.yaml")
    others = [d for d in diffs if not d.startswith(EXTENDABLE)]
    if others and main:
        print("warning: the config differs from the checkpoint's (" + "; ".join(others)
              + "); continuing with the current values", file=sys.stderr)


def save_checkpoint(state: TrainState, cfg: Config, run_dir: Path) -> Path:
    """Everything needed for an exact resume, written atomically; old ones pruned."""
    path = checkpoint_folder(run_dir) / f"step_{state.step:09d}.pt"
    saved = {"step": state.step, "best_psnr": state.best_psnr, "model": state.model.state_dict(),
             "ema": state.ema.state_dict() if state.ema is not None else {},
             "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
             "scaler": state.scaler.state_dict(), "rng_cpu": torch.get_rng_state(),
             "config": dump_config(cfg)}
    with atomic_path(path) as tmp:
        torch.save(saved, tmp)
    for old in sorted(path.parent.glob("step_*.pt"))[:-cfg.train.keep_checkpoints]:
        old.unlink()
    return path
