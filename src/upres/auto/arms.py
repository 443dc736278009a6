"""An arm is a start with its learning rate, crop, batch and layout: its training config, and
training it for a number of seconds."""

from __future__ import annotations

import json
import re

from upres.auto.costs import training_val_seconds, val_dtype
from upres.auto.journal import AutoRun
from upres.auto.measure import arm_psnr
from upres.training.config import Config, load_config


def arm_config(run: AutoRun, arm: dict, iterations: int, time_budget: float | None = None,
               extra: list[str] | None = None) -> Config:
    """The training config of an arm: its start, freezing, crop, batch and rate; validation on
    the held-out pairs at the end of each round."""
    split = run.journal["split"]
    o = [f"data.root={json.dumps(str(run.data))}", "data.workers=0", f"data.crop={arm['crop']}",
         f"train.batch_size={arm['batch']}", f"train.lr={arm['lr']}", "train.scheduler=cosine",
         "train.warmup=0.03", f"train.iterations={iterations}", "train.precision=auto",
         f"train.ema={arm['ema']}", "train.ema_warmup=true", f"train.seed={run.options.seed}",
         f"train.device={run.shard.device}",
         f"train.val_every={10 ** 9}", f"train.checkpoint_every={arm['checkpoint_every']}",
         "train.log_every=10", "train.keep_checkpoints=1", f"model.scale={run.scale}",
         f"train.channels_last={bool(arm.get('channels_last'))}",
         f"train.freeze={json.dumps(arm['freeze'])}", f"train.unfreeze={json.dumps(arm['unfreeze'])}",
         f"data.val_max_images={run.journal['candidates']['val_used']}", f"val.dtype={val_dtype(run, arm)}"]
    if split["val"] is not None:  # held out from training
        o.append(f"data.val_pairs={json.dumps(split['val'])}")
    if split.get("crop"):  # validated on their centres
        o += [f"data.val_lr={json.dumps(str(run.out / 'val' / 'lr'))}",
              f"data.val_hr={json.dumps(str(run.out / 'val' / 'hr'))}"]
    if run.options.cache_dir:
        o.append(f"data.cache_dir={json.dumps(str(run.options.cache_dir))}")
    if time_budget is not None:
        o.append(f"train.time_budget={max(time_budget, 1):.1f}s")
    if arm.get("preset"):
        o += [f"model.preset={arm['preset']}"]
    else:
        o += [f"model.arch={arm['arch']}", f"model.params={json.dumps(_free_params(arm))}",
              f"init.source={json.dumps(arm['source'])}"]
    return load_config(None, [*o, *(extra or [])])


def _free_params(arm: dict) -> dict:
    """The start's hyperparameters, less the scale (model.scale holds it)."""
    from upres.models import registry

    scale_key = registry.get(arm["arch"]).scale_key
    return {k: v for k, v in arm["hparams"].items() if k != scale_key}


def head_patterns(names: list[str], share: float) -> list[str]:
    """Freeze patterns for the first ``share`` of a network's parameter tensors (registration
    order follows the forward pass in every registered family): whole modules only, by their
    name's first two components (``body.5``, ``conv_first``)."""
    def module(name: str) -> str:  # body.5.rdb1.conv1.weight -> body.5; conv_first.weight -> conv_first
        return ".".join(name.rsplit(".", 1)[0].split(".")[:2])

    cut = int(len(names) * share)
    head = {module(n) for n in names[:cut]}
    tail = {module(n) for n in names[cut:]}
    return [rf"{re.escape(m)}\." for m in sorted(head - tail, key=[module(n) for n in names].index)]


def arm_variants(cand: dict, names: list[str]) -> list[dict]:
    """The arms of a start: all layers training, and tail first (the first 85% of the tensors
    frozen, all training from the second half on, each step cheaper); a preset from scratch
    trains whole."""
    if cand.get("preset"):
        return [{"variant": "scratch", "freeze": [], "unfreeze": []}]
    return [{"variant": "full", "freeze": [], "unfreeze": []},
            {"variant": "tail-first", "freeze": head_patterns(names, 0.85),
             "unfreeze": [{"at": 0.5, "params": ["."]}]}]


def param_names(cand: dict) -> list[str]:
    """The parameter names of a start's network (built on the meta device)."""
    import torch

    from upres.models import registry

    if cand.get("preset"):
        return []
    with torch.device("meta"):
        model = registry.build_model(cand["arch"], cand["hparams"])
    return [n for n, _ in model.named_parameters()]


def train_arm(run: AutoRun, arm: dict, seconds: float, iterations: int, midway: bool = False) -> None:
    """Continue an arm's training for ``seconds`` (at most ``iterations`` steps in all), ending
    with a validation (and one ``midway``, for the slope ``training_value`` reads); every rank
    trains, rank 0 writes."""
    from upres.training.loop import train

    vals, extra = 1, []
    if midway:  # at 60% of the round's steps past where it resumes: a faster round than
        # planned still validates twice, not three times (validation falls on multiples of
        # val_every counted from step 0: round 2 at 60m on minicomp resumed at step 35 with
        # val_every 39 and validated at 39, 78 and 105); the steps of its training time, not
        # of the round's (on 512x512 pairs a 2-minute round held 84 s of training after the
        # time reserved for its two validations, and 60% of 2 minutes fell on its last step but one)
        vals = 2
        half = 0.6 * (seconds - vals * training_val_seconds(run, arm)) / arm["seconds_per_step"]
        resumed_at = run.shard.broadcast(arm_psnr(run, arm["name"])[1])  # as rank 0 reads it
        extra = [f"train.val_every={resumed_at + max(int(half), 1)}"]
    cfg = arm_config(run, arm, iterations, seconds - vals * training_val_seconds(run, arm), extra)
    train(cfg, run.out / "arms" / arm["name"], resume="auto",
          command=["upres", "auto", arm["name"]], progress=run.options.progress)


def horizon(arm: dict) -> int:
    """The steps of an arm's cosine schedule: what it would train if it won."""
    return max(int(arm["steps_planned"]), 10)
