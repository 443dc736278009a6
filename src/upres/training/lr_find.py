"""The learning-rate range test (``upres lr-find``): a short run whose rate grows exponentially
each step, from ``low`` to ``high``, on the config's own data, model, initialisation and freezing;
the smoothed loss against the rate suggests where training learns fastest. Each batch's loss is
divided by bicubic's loss on the same batch, which takes out most of the noise of crops that
differ in difficulty. Nothing is saved but the curve (``lr_find.json``, ``lr_find.png``)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from upres.errors import DataError
from upres.inference.devices import resolve_device
from upres.inference.shard import Shard
from upres.inference.torch_backend import autocast_context
from upres.io.files import atomic_path, atomic_write_bytes
from upres.training.config import Config
from upres.training.loop import apply_freezing, build_state, loss_fn, make_loader, prepare_data


@dataclass
class RangeTest:
    lrs: list[float]
    # the training loss relative to bicubic's on the same batches (crops differ a lot in
    # difficulty), as a ratio of exponential moving averages
    losses: list[float]
    suggestion: float  # the rate at the smoothed minimum / 3
    seconds_per_step: float


def suggest(lrs: list[float], losses: list[float], margin: float = 3.0) -> float:
    """The rate at the smoothed loss's minimum divided by ``margin``: past the minimum the loss
    soon diverges (fine-tuning x4plus on minicomp: minimum at 6e-4, divergence from 1e-3), and
    the steepest-descent point is mostly the moving average's warm-up on such flat curves."""
    return float(lrs[int(np.argmin(losses))] / margin)


def range_test(cfg: Config, out_dir: str | Path, steps: int = 60, low: float = 1e-6,
               high: float = 1e-2, progress: bool = True) -> RangeTest:
    """Run the range test in this process (``out_dir`` holds synthesized pairs if the config
    asks for them)."""
    from tqdm import tqdm

    shard = Shard(device=resolve_device(cfg.train.device))
    data = prepare_data(cfg, shard, Path(out_dir), progress)
    if not data.train_idx:
        raise DataError("lr-find needs training pairs")
    state = build_state(cfg, torch.device(shard.device))
    apply_freezing(state.model, cfg.train, 0)
    state.model.train()
    loader = iter(make_loader(data.dataset, cfg, shard, 0, steps))  # not train.iterations
    factor = (high / low) ** (1 / max(steps - 1, 1))
    lrs, smoothed, average, hardness, best = [], [], 0.0, 0.0, math.inf
    started = None
    for i in tqdm(range(steps), desc="lr-find", unit="step", disable=not progress):
        lr = low * factor ** i
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        lr_b, hr_b = (t.to(state.device) for t in next(loader))
        if cfg.train.channels_last:  # as the training step feeds it
            lr_b = lr_b.contiguous(memory_format=torch.channels_last)
        with autocast_context(state.device, state.amp_dtype):
            sr = state.model(lr_b)
        loss = loss_fn(cfg.train.loss, sr.float(), hr_b, cfg.train.charbonnier_eps)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        if i == 1:
            started = time.perf_counter()  # the first step pays for warm-up
        with torch.no_grad():  # each batch's difficulty: bicubic's loss on it
            bicubic = F.interpolate(lr_b.float(), scale_factor=cfg.model.scale, mode="bicubic")
            difficulty = loss_fn(cfg.train.loss, bicubic, hr_b, cfg.train.charbonnier_eps).item()
        value = loss.item()
        if not math.isfinite(value):
            break
        average = 0.8 * average + 0.2 * value
        hardness = 0.8 * hardness + 0.2 * difficulty
        smooth = average / max(hardness, 1e-12)  # a ratio of averages (the bias cancels)
        lrs.append(lr)
        smoothed.append(smooth)
        best = min(best, smooth)
        if smooth > 4 * best and i > 5:  # diverging: the rest tells nothing
            break
    per_step = (time.perf_counter() - started) / max(len(lrs) - 2, 1) if started else float("nan")
    return RangeTest(lrs, smoothed, suggest(lrs, smoothed), per_step)


def write_range_test(result: RangeTest, out_dir: str | Path) -> dict[str, Path]:
    """``lr_find.json`` (the curve and the suggestion) and ``lr_find.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "lr_find.json", (json.dumps(asdict(result), indent=1) + "\n").encode())
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(result.lrs, result.losses, marker=".")
    ax.axvline(result.suggestion, color="tab:red", ls="--",
               label=f"suggested {result.suggestion:.2e} (minimum / 3)")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log)")
    ax.set_ylabel("training loss / bicubic's (smoothed)")
    ax.set_title("learning-rate range test")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_dir / "lr_find.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return {"lr_find.json": out_dir / "lr_find.json", "lr_find.png": out_dir / "lr_find.png"}
