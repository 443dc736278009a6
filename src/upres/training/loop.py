"""The PSNR training recipe. ``train()`` reads top to bottom; each step it calls is a named
function that can be tested on its own: set up the process, check and cache the data, build the
training state, resume, one optimiser step, validate on the EMA weights through the ``upscale``
inference path, checkpoint atomically, export, log. DDP under torchrun: rank 0 alone writes files.

Launch: ``upres train CONFIG.yaml`` (one process) or
``torchrun --nproc_per_node N -m upres.cli train CONFIG.yaml`` (N processes; NCCL on GPUs,
gloo on CPUs)."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from upres.errors import ConfigError, DataError, TrainingError, TrainingInterrupted, listing
from upres.inference.devices import cpu_has_fast_bf16
from upres.inference.shard import Shard, current_shard
from upres.inference.torch_backend import autocast_context, resolve_dtype
from upres.inference.upscaler import Upscaler
from upres.io.files import OutputExistsError, atomic_write_bytes
from upres.io.loading import load_weights, save_model
from upres.io.pairs import PairCache, check_sizes, find_pairs
from upres.io.weights import load_matching
from upres.models.registry import build_model, describe
from upres.scoring import metrics
from upres.training.checkpoints import (
    TrainState,
    find_resumable,
    latest_checkpoint,
    restore,
    save_checkpoint,
)
from upres.training.compiled import check_compiled
from upres.training.config import Config, dump_config
from upres.training.data import CropDataset, StepSampler, resolve_splits
from upres.training.fits import check_step_fits
from upres.training.run_report import crop_strip
from upres.training.runlog import PhaseClock, RunLog, StopFlag


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_psnr: float
    last_val: dict = field(default_factory=dict)
    init_report: dict = field(default_factory=dict)


@dataclass
class TrainData:
    cache: PairCache
    train_idx: list[int]
    val_idx: list[int]
    dataset: CropDataset
    bicubic_psnr: float | None = None  # of the validation pairs, computed once


# --------------------------------------------------------------------------- the recipe


def train(cfg: Config, run_dir: str | Path, resume: str | None = None,
          command: list[str] | None = None, progress: bool = True,
          overwrite: bool = False) -> TrainResult:
    tc, run_dir, clock = cfg.train, Path(run_dir), PhaseClock()
    shard = current_shard(tc.device)
    check_run_folder(run_dir, resume, overwrite)  # a finished run is never mixed with a new one
    with refusal_leaves_no_trace(run_dir, resume, overwrite):
        with clock("data"):  # every pair checked before anything is written
            data = prepare_data(cfg, shard, run_dir, progress)
        with clock("model"):
            check_step_fits(cfg, shard.device)  # before the network takes its memory
            state = build_state(cfg, torch.device(shard.device))
            preflight(cfg, data, describe(state.model))
        ckpt_path = resume_state(state, run_dir, resume, cfg, shard) if resume else None
    if shard.main:
        if overwrite and not resume:
            clear_run(run_dir)
        write_run_files(cfg, run_dir, command or sys.argv)
    apply_freezing(state.model, tc, state.step)
    forward = wrap_model(state.model, cfg, shard)
    stages = {tc.steps(u.at) for u in tc.unfreeze}
    loader = make_loader(data.dataset, cfg, shard, state.step)
    with RunLog(shard, run_dir, tc.iterations, state.step, ckpt_path is not None, progress,
                clock) as log, StopFlag() as stop:
        state.started = time.monotonic()
        if state.step == 0:  # the network's size, once (experiment tables show it)
            log.record({"step": 0, "params": sum(p.numel() for p in state.model.parameters())})
        if shard.main and data.val_idx and tc.val_at_start and state.step == 0:
            run_validation(state, data, cfg, run_dir, log)
        log.start_clock()
        budget = tc.budget_seconds()
        state.deadline = None if budget is None else state.started + budget
        asked = time.perf_counter()  # the loop waiting for the loader: data on the critical path
        for lr_b, hr_b in loader:
            clock.add("waiting for data", time.perf_counter() - asked)
            if tc.compile and state.compiled is None:
                with clock("compile check"):
                    forward = checked_forward(state, forward, lr_b, hr_b, cfg, shard, log)
            if state.step in stages and apply_freezing(state.model, tc, state.step):
                forward = wrap_model(state.model, cfg, shard, compile=state.compiled)
                log.message(f"step {state.step}: {trainable_share(state.model)} of the "
                            "parameters train from here")
            state.step += 1
            with clock("training steps"):
                outcome = train_step(state, forward, lr_b, hr_b, cfg, shard, run_dir, stop)
            if after_step(state, outcome, data, cfg, shard, run_dir, log, stop):
                break
            asked = time.perf_counter()
        if shard.main:
            with clock("export"):
                export(state, run_dir, "last",
                       {"val_psnr": state.last_val.get("val_psnr", float("nan"))})
            log.finish(state)
    return TrainResult(run_dir, state.step, state.best_psnr, state.last_val, state.init_report)


def after_step(state: TrainState, outcome: StepOutcome, data: TrainData, cfg: Config,
               shard: Shard, run_dir: Path, log: RunLog, stop: StopFlag) -> bool:
    """Log, validate, checkpoint and stop as the step asks; True when training ends here (the
    time budget spent)."""
    tc = cfg.train
    if outcome.skipped:
        log.record({"step": state.step, "skipped_nonfinite": state.skipped})
    log.tick()
    last = state.step == tc.iterations or outcome.over_budget
    if state.step % tc.log_every == 0 or last:
        log.training(state, outcome.loss)
    if shard.main and data.val_idx and (state.step % tc.val_every == 0 or last):
        run_validation(state, data, cfg, run_dir, log)
    if state.step % tc.val_every == 0 or last:
        shard.barrier()  # the other ranks wait while rank 0 validates
    stop_now = outcome.stop if shard.world > 1 else stop.signal is not None  # (incl. validation)
    if shard.main and (state.step % tc.checkpoint_every == 0 or stop_now or last):
        with log.clock("checkpoints"):
            saved = save_checkpoint(state, cfg, run_dir)
    if stop_now:
        if shard.main:
            log.message(f"stopped by a signal at step {state.step}; checkpoint {saved}")
        raise TrainingInterrupted(f"interrupted at step {state.step}; resume with --resume auto "
                                  f"(checkpoint in {run_dir})")
    if outcome.over_budget:
        log.message(f"time budget {tc.time_budget} reached at step {state.step}")
    return outcome.over_budget


# --------------------------------------------------------------------------- set-up steps


def prepare_data(cfg: Config, shard: Shard, run_dir: Path, progress: bool) -> TrainData:
    """Pairs found, split, checked and decoded into the cache by rank 0 before training starts;
    every problem is reported at once."""
    splits = resolve_splits(cfg.data, cfg.train.seed)
    if cfg.data.groups is not None:
        splits.train, splits.val = group_pairs(cfg, splits.train, splits.val)
    if cfg.data.extra_hr:
        splits.train += synthesized_pairs(cfg, splits.train, shard, run_dir, progress)
    all_pairs = splits.train + splits.val
    if shard.main:
        cache = PairCache(all_pairs, cfg.model.scale, cfg.data.cache_dir, progress=progress,
                          known_problems=splits.problems)
    shard.barrier()
    if not shard.main:
        cache = PairCache(all_pairs, cfg.model.scale, cfg.data.cache_dir, progress=False)
    train_idx = list(range(len(splits.train)))
    val_idx = list(range(len(splits.train), len(all_pairs)))
    groups = None
    if cfg.data.balance == "groups":
        from upres.degradation.fingerprint import Fingerprint

        groups = Fingerprint.load(cfg.data.fingerprint).groups_of(splits.train)
    dataset = CropDataset(cache, train_idx, cfg.data.crop, cfg.model.scale, cfg.train.seed,
                          cfg.data.hflip, cfg.data.rotate, groups)
    return TrainData(cache, train_idx, val_idx, dataset)


def group_pairs(cfg: Config, train: list, val: list) -> tuple[list, list]:
    """The pairs of the fingerprint groups ``data.groups`` (a routed expert's data)."""
    from upres.degradation.fingerprint import Fingerprint

    fp = Fingerprint.load(cfg.data.fingerprint)
    wanted = set(cfg.data.groups)
    unknown = sorted(wanted - set(range(len(fp.groups))))
    if unknown:
        raise DataError(f"data.groups: {unknown} not in {cfg.data.fingerprint} "
                        f"({len(fp.groups)} groups)")
    chosen = [p for p, g in zip(train, fp.groups_of(train)) if g in wanted]
    if not chosen:
        raise DataError(f"data.groups {sorted(wanted)}: no training pair is in these groups")
    val_chosen = [p for p, g in zip(val, fp.groups_of(val)) if g in wanted]
    if val and not val_chosen:
        import warnings

        warnings.warn(f"data.groups {sorted(wanted)}: no validation pair is in these groups; "
                      f"validating on all {len(val)} validation pairs", stacklevel=2)
    return chosen, val_chosen or val


def synthesized_pairs(cfg: Config, train_pairs: list, shard: Shard, run_dir: Path,
                      progress: bool) -> list:
    """Rank 0 fingerprints the training pairs (never the validation ones) and degrades
    ``data.extra_hr`` like them into RUN/synth; every rank then reads the same pairs."""
    from upres.degradation.fingerprint import fingerprint
    from upres.degradation.synth import extra_hr_sources, synthesize_pairs
    folder = run_dir / "synth"
    extra_hr_sources(cfg.data.extra_hr)  # a wrong folder is refused before anything is written
    if shard.main and not (folder / "synth.json").exists():
        fp, _ = fingerprint(train_pairs, cfg.model.scale, cfg.data.cache_dir, progress=progress)
        fp.save(run_dir / "fingerprint.json")
        synthesize_pairs(cfg.data.extra_hr, fp, folder, cfg.train.seed, cfg.data.crop)
    shard.barrier()
    pairs, problems = find_pairs(folder / "lr", folder / "hr")
    if problems:
        raise DataError(f"{folder}:" + listing(problems))
    return pairs


# What a run folder holds; --overwrite removes these (and nothing else) before a new run.
RUN_FILES = ("config.yaml", "command.txt", "metrics.jsonl", "tb", "checkpoints", "best.safetensors",
             "best.pth", "last.safetensors", "last.pth", "synth", "fingerprint.json",
             "init_report.json", "report.html")


def check_run_folder(run_dir: Path, resume: str | None, overwrite: bool) -> None:
    """A folder holding a run continues only with ``--resume``, or starts over with
    ``--overwrite``; a folder of other files is used only with ``--overwrite``."""
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputExistsError(f"{run_dir}: the run folder is a file")
    if resume or not run_dir.is_dir() or overwrite:
        return
    if any((run_dir / name).exists() for name in RUN_FILES):
        raise OutputExistsError(f"{run_dir} holds a training run; pass --resume auto to continue "
                                "it, or --overwrite to start over (its run files are replaced)")
    if any(run_dir.iterdir()):
        raise OutputExistsError(f"{run_dir}: the run folder holds other files; choose another "
                                "--run-dir or pass --overwrite")


def clear_run(run_dir: Path) -> None:
    """The files of an earlier run in ``run_dir`` (``RUN_FILES`` only), for --overwrite."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def preflight(cfg: Config, data: TrainData, descriptor) -> None:
    """What the config asks of the data and the model, checked before anything is written:
    crops that fit every training image and the model's size rule, validation images large
    enough for SSIM."""
    scale, crop = cfg.model.scale, cfg.data.crop
    lc = crop // scale
    problems = check_sizes(data.cache, data.train_idx, lc, f"the LR crop {lc} (data.crop {crop})")
    border = scale if cfg.val.crop_border is None else cfg.val.crop_border
    least = -(-(11 + 2 * border) // scale)  # SSIM's 11x11 window after the border
    problems += check_sizes(data.cache, data.val_idx, least,
                            f"{least} px, what SSIM needs after val.crop_border {border}")
    if lc % descriptor.size_multiple:
        problems.append(f"data.crop / model.scale = {lc} must be a multiple of "
                        f"{descriptor.size_multiple} for this {descriptor.arch}")
    if problems:
        raise DataError(f"{len(problems)} problem(s) with the config and the data:"
                        + listing(problems))


def write_run_files(cfg: Config, run_dir: Path, command: list[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / "config.yaml", dump_config(cfg).encode())
    atomic_write_bytes(run_dir / "command.txt", (" ".join(command) + "\n").encode())


def make_optimizer(model: nn.Module, tc) -> torch.optim.Optimizer:
    opt_cls = torch.optim.Adam if tc.optimizer == "adam" else torch.optim.AdamW
    return opt_cls(model.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, tc) -> torch.optim.lr_scheduler.LRScheduler:
    """Warmup, then multistep, cosine or constant (``TrainConfig.lr_factor``)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, tc.lr_factor)


def apply_freezing(model: nn.Module, tc, step: int) -> bool:
    """Set which parameters train at ``step`` (``train.freeze`` / ``train.unfreeze``); True when
    that changed (a DDP wrapper must then be rebuilt)."""
    changed = False
    for name, param in model.named_parameters():
        trains = tc.trains(name, step)
        changed |= param.requires_grad != trains
        param.requires_grad_(trains)
    return changed


def build_state(cfg: Config, device: torch.device) -> TrainState:
    """Model (initialised from ``init.source`` if set), EMA copy, optimiser, schedule, scaler."""
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model.arch, cfg.model.hparams())
    init_report = {}
    if cfg.init.source:
        init_report = load_matching(model, load_weights(cfg.init.source), cfg.init.strict)
        init_report["source"] = cfg.init.source
    # The same dtype rules as inference (fp16 is CUDA-only; unsupported dtypes are refused).
    amp_dtype = resolve_dtype(tc.precision, device, describe(model).dtypes)
    if tc.precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        warnings.warn("train.precision bf16 is emulated on this CPU (no native bf16): an x4plus "
                      "step measured 9x slower than fp32; train.precision auto picks fp32 here",
                      stacklevel=2)
    model.to(device)
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if tc.ema > 0 else None
    optimizer = make_optimizer(model, tc)
    return TrainState(model, ema, optimizer, make_scheduler(optimizer, tc),
                      torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
                      amp_dtype, device, init_report=init_report)


def resume_state(state: TrainState, run_dir: Path, resume: str, cfg: Config,
                 shard: Shard) -> Path | None:
    """Restore the state from ``resume`` (a path, or ``auto``: the newest intact checkpoint of
    the run folder; None in a new run)."""
    found = find_resumable(run_dir, resume, shard.main)
    if found is None:
        return None
    restore(state, found[1], found[0], cfg, shard.main)
    if state.step >= cfg.train.iterations:
        raise ConfigError(f"{found[0]}: the checkpoint is at step {state.step}, and train.iterations "
                          f"is {cfg.train.iterations}: nothing is left to train; to train on, raise "
                          f"train.iterations (e.g. train.iterations={2 * state.step})")
    return found[0]


@contextlib.contextmanager
def refusal_leaves_no_trace(run_dir: Path, resume: str | None, overwrite: bool):
    """A run refused while it is set up (data, model, resume checks) leaves the run folder as it
    found it: what a new run wrote there (``data.extra_hr``'s fingerprint and pairs) is removed,
    and a folder it created, if empty, too. (A fingerprint.json left by a refused run had blocked
    the corrected rerun.)"""
    existed = run_dir.is_dir()
    before = {name for name in RUN_FILES if (run_dir / name).exists()}
    try:
        yield
    except BaseException:
        if not resume or not before:
            for name in set(RUN_FILES) - before:
                path = run_dir / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.exists() or path.is_symlink():
                    path.unlink()
            if not existed and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()
        raise


def trainable_share(model: nn.Module) -> str:
    total = sum(p.numel() for p in model.parameters())
    return f"{sum(p.numel() for p in model.parameters() if p.requires_grad) / total:.0%}"


def wrap_model(model: nn.Module, cfg: Config, shard: Shard, compile: bool | None = None) -> nn.Module:
    """DDP across processes, then ``torch.compile`` if asked (``compile``: as checked against
    eager, else ``train.compile``)."""
    net = model
    if shard.world > 1:
        device = torch.device(shard.device)
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return torch.compile(net) if (cfg.train.compile if compile is None else compile) else net


def checked_forward(state: TrainState, forward: nn.Module, lr_b: torch.Tensor, hr_b: torch.Tensor,
                    cfg: Config, shard: Shard, log: RunLog) -> nn.Module:
    """``train.compile``'s first batch: the compiled network where it matches eager (outputs and
    gradients), else eager, said in the log. Across processes the bare network is compiled once
    more for the check (a DDP forward without its backward would leave its reducer waiting), and
    rank 0's verdict holds for every rank."""
    tc = cfg.train
    lr_b, hr_b = lr_b.to(state.device), hr_b.to(state.device)
    if tc.channels_last:
        lr_b = lr_b.contiguous(memory_format=torch.channels_last)
    log.message("train.compile: compiling, then checking against eager on the first batch (a "
                "cold compile can take minutes on a CPU) ...")
    compiled = forward if shard.world == 1 else torch.compile(state.model)
    check = check_compiled(state.model, compiled, state.model, lr_b, hr_b,
                           lambda sr, hr: loss_fn(tc.loss, sr, hr, tc.charbonnier_eps),
                           state.amp_dtype)
    check = shard.broadcast(check)
    state.compiled = check.ok
    log.message(check.sentence())
    log.record({"step": state.step, "compile_check": {
        "ok": check.ok, "output_error": check.output_error, "grad_error": check.grad_error,
        "tolerance": check.tolerance}})
    return forward if check.ok else wrap_model(state.model, cfg, shard, compile=False)


def make_loader(dataset: CropDataset, cfg: Config, shard: Shard, start_step: int,
                steps: int | None = None) -> DataLoader:
    """Batches for the steps still to run (``steps``, else up to ``train.iterations``); the
    sampler makes them depend on (seed, step) only."""
    tc = cfg.train
    steps = tc.iterations - start_step if steps is None else steps
    sampler = StepSampler(tc.batch_size, start_step, shard.rank, shard.world, steps)
    workers = min(cfg.data.workers, os.cpu_count() or 1)  # more only compete for the cores
    return DataLoader(dataset, batch_size=tc.batch_size, sampler=sampler,
                      num_workers=workers, pin_memory=shard.device.startswith("cuda"),
                      persistent_workers=False, prefetch_factor=4 if workers else None)


# --------------------------------------------------------------------------- loop steps


def loss_fn(name: str, sr: torch.Tensor, hr: torch.Tensor, eps: float) -> torch.Tensor:
    if name == "mse":
        return F.mse_loss(sr, hr)
    if name == "l1":
        return F.l1_loss(sr, hr)
    return torch.sqrt((sr - hr) ** 2 + eps * eps).mean()  # charbonnier


def ema_decay(tc, step: int) -> float:
    """The EMA decay at (1-based) ``step``: ``tc.ema``, capped early by ``train.ema_warmup``.
    RealSR fine-tuned on other6 (crop 128 x batch 8, cosine 2e-4, 300 steps) scored 23.646 dB
    on validation at step 50 with the warm-up, 23.513 with 0.99 alone; 23.740 and 23.666 at 100;
    23.785 and 23.789 at 300."""
    if not tc.ema_warmup:
        return tc.ema
    return min(tc.ema, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """BasicSR's rule: ema = decay * ema + (1 - decay) * model."""
    ema_params = list(ema.parameters())
    torch._foreach_mul_(ema_params, decay)
    torch._foreach_add_(ema_params, list(model.parameters()), alpha=1 - decay)


@dataclass
class StepOutcome:
    loss: torch.Tensor
    skipped: bool  # non-finite loss, batch skipped (train.nonfinite: skip)
    stop: bool  # a stop signal reached some rank
    over_budget: bool = False  # train.time_budget is spent (on some rank)


def train_step(state: TrainState, forward: nn.Module, lr_b: torch.Tensor, hr_b: torch.Tensor,
               cfg: Config, shard: Shard, run_dir: Path, stop: StopFlag) -> StepOutcome:
    """One optimiser step on a batch, or a skipped batch where the loss is not finite."""
    tc, device = cfg.train, state.device
    lr_b, hr_b = lr_b.to(device, non_blocking=True), hr_b.to(device, non_blocking=True)
    if tc.channels_last:
        lr_b = lr_b.contiguous(memory_format=torch.channels_last)
    with autocast_context(device, state.amp_dtype):
        sr = forward(lr_b)
    loss = loss_fn(tc.loss, sr.float(), hr_b, tc.charbonnier_eps)
    # One small all-reduce keeps the ranks in step: any rank's non-finite loss, stop signal or
    # spent time budget applies to all, so no rank waits forever for another.
    over = state.deadline is not None and time.monotonic() >= state.deadline
    flags = torch.stack([(~torch.isfinite(loss.detach())).to(torch.int32).reshape(()),
                         torch.tensor(int(stop.signal is not None), device=device),
                         torch.tensor(int(over), device=device)])
    if shard.world > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    nonfinite, stop_now, over = (bool(v) for v in flags.tolist())
    if nonfinite and tc.nonfinite == "stop":
        raise TrainingError(
            f"step {state.step}: the {tc.loss} loss is {loss.item()} (non-finite); stopped "
            f"without saving. Last good checkpoint: {latest_checkpoint(run_dir) or 'none yet'}. "
            "Set train.nonfinite: skip to skip such batches instead")
    if nonfinite:
        state.skipped += 1
    else:
        state.scaler.scale(loss).backward()
        if tc.grad_clip:
            state.scaler.unscale_(state.optimizer)
            nn.utils.clip_grad_norm_(state.model.parameters(), tc.grad_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    if not nonfinite and state.ema is not None:
        ema_update(state.ema, state.model, ema_decay(tc, state.step))
    return StepOutcome(loss, nonfinite, stop_now, over)


CROPS_PER_VALIDATION = 2


def validate(model: nn.Module, cache: PairCache, indices: list[int], cfg: Config,
             device: torch.device, bicubic_psnr: float | None = None,
             progress: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    """Mean PSNR (RGB and Y) and SSIM over the validation pairs, on uint8-rounded outputs of the
    same inference path as ``upscale``, bicubic scored beside it (unless already known); and
    crop strips LR | bicubic | model | HR of the first pairs, for the run's page."""
    from tqdm import tqdm

    was_training = model.training
    up = Upscaler(model, device=str(device), dtype=cfg.val.dtype, channels_last=cfg.train.channels_last,
                  tile=cfg.val.tile, tile_overlap=cfg.val.tile_overlap,
                  self_ensemble=cfg.val.self_ensemble, backend=cfg.val.backend,
                  cache_converted=False)
    border = cfg.model.scale if cfg.val.crop_border is None else cfg.val.crop_border
    scores = {"psnr": [], "psnr_y": [], "ssim": []}
    bic, strips = [], {}
    for i in tqdm(indices, desc="validating", unit="pair", leave=False, disable=not progress):
        lr, hr = cache.load(i, mmap=False)
        sr = up.upscale_array(lr)
        if len(strips) < CROPS_PER_VALIDATION:
            strips[cache.pairs[i].name] = crop_strip(lr, sr, hr, cfg.model.scale)
        scores["psnr"].append(metrics.psnr(sr, hr, border))
        scores["psnr_y"].append(metrics.psnr(sr, hr, border, y_channel=True))
        scores["ssim"].append(metrics.ssim(sr, hr, border))
        if bicubic_psnr is None:
            bic.append(metrics.psnr(metrics.bicubic_upscale(lr, cfg.model.scale), hr, border))
    model.train(was_training)
    result = {f"val_{k}": float(np.mean(v)) for k, v in scores.items()}
    result["bicubic_psnr"] = float(np.mean(bic)) if bicubic_psnr is None else bicubic_psnr
    return result, strips


def run_validation(state: TrainState, data: TrainData, cfg: Config, run_dir: Path,
                   log: RunLog) -> None:
    """Validate the EMA weights, log the scores, export ``best.*`` when they improve."""
    with log.clock("validation"):
        state.last_val, strips = validate(state.eval_model, data.cache, data.val_idx, cfg,
                                          state.device, data.bicubic_psnr,
                                          log.progress and log.shard.main)
    data.bicubic_psnr = state.last_val["bicubic_psnr"]
    val = state.last_val
    log.record({"step": state.step, **val, "train_seconds": round(time.monotonic() - state.started, 2)})
    log.message(f"step {state.step}: val PSNR {val['val_psnr']:.3f} dB "
                f"(Y {val['val_psnr_y']:.3f}, SSIM {val['val_ssim']:.4f}; "
                f"bicubic {val['bicubic_psnr']:.3f})")
    if val["val_psnr"] > state.best_psnr:
        state.best_psnr = val["val_psnr"]
        with log.clock("export"):
            export(state, run_dir, "best", {"val_psnr": state.best_psnr})
    log.crops(state.step, strips)


def export(state: TrainState, run_dir: Path, name: str, extra: dict) -> None:
    """``NAME.safetensors`` (with metadata) and a BasicSR-style ``NAME.pth`` of the EMA weights."""
    for suffix in (".safetensors", ".pth"):
        save_model(state.eval_model, run_dir / f"{name}{suffix}", extra={"step": state.step, **extra})
