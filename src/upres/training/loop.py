"""The PSNR training recipe. ``train()`` reads top to bottom; each step it calls is a named
function that can be tested on its own: set up the process, check and cache the data, build the
training state, resume, one optimiser step, validate on the EMA weights through the ``upscale``
inference path, checkpoint atomically, export, log. DDP under torchrun: rank 0 alone writes files.

Launch: ``upres train CONFIG.yaml`` (one process) or
``torchrun --nproc_per_node N -m upres.cli train CONFIG.yaml`` (N processes; NCCL on GPUs,
gloo on CPUs)."""

from __future__ import annotations

import copy
import json
import math
import pickle
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from upres.errors import CheckpointError, DataError, DiskFullError, TrainingError, TrainingInterrupted
from upres.inference.shard import current_shard
from upres.inference.torch_backend import autocast_context, resolve_device, resolve_dtype
from upres.inference.upscaler import Upscaler
from upres.io.checkpoints import load_matching
from upres.io.files import atomic_path, atomic_write_bytes, out_of_space
from upres.io.loading import load_weights, save_model
from upres.models import build_model, describe
from upres.scoring import metrics
from upres.training.config import Config, dump_config
from upres.training.data import CropDataset, PairCache, StepSampler, resolve_splits


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_psnr: float
    last_val: dict = field(default_factory=dict)
    init_report: dict = field(default_factory=dict)


@dataclass
class Process:
    """This process's place in the run: rank, world size, device and the run folder."""

    run_dir: Path
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainData:
    cache: PairCache
    train_idx: list[int]
    val_idx: list[int]
    dataset: CropDataset
    bicubic_psnr: float | None = None  # of the validation pairs, computed once


@dataclass
class TrainState:
    """Everything a checkpoint holds, plus how the forward pass runs."""

    model: nn.Module
    ema: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype
    step: int = 0
    best_psnr: float = -math.inf
    skipped: int = 0
    last_val: dict = field(default_factory=dict)
    started: float = 0.0  # time.monotonic() when this process began training
    deadline: float | None = None  # time.monotonic() at which train.time_budget is spent
    init_report: dict = field(default_factory=dict)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and exported: the EMA copy where there is one."""
        return self.ema if self.ema is not None else self.model


# --------------------------------------------------------------------------- the recipe


def train(cfg: Config, run_dir: str | Path, resume: str | None = None,
          command: list[str] | None = None, progress: bool = True) -> TrainResult:
    tc = cfg.train
    proc = setup_process(tc.device, Path(run_dir))
    data = prepare_data(cfg, proc, progress)  # every pair checked before anything is written
    if proc.main:
        write_run_files(cfg, proc.run_dir, command or sys.argv)
    state = build_state(cfg, proc.device)
    ckpt_path = resume_state(state, proc.run_dir, resume, cfg, proc) if resume else None
    forward = wrap_model(state.model, cfg, proc)
    loader = make_loader(data.dataset, cfg, proc, state.step)
    with RunLog(proc, tc.iterations, state.step, ckpt_path is not None, progress) as log, \
            StopFlag() as stop:
        state.started = time.monotonic()
        if state.step == 0:  # the network's size, once (experiment tables show it)
            log.record({"step": 0, "params": sum(p.numel() for p in state.model.parameters())})
        if proc.main and data.val_idx and tc.val_at_start and state.step == 0:
            run_validation(state, data, cfg, proc, log)
        log.start_clock()
        state.deadline = state.started + tc.budget_seconds() if tc.time_budget else None
        for lr_b, hr_b in loader:
            state.step += 1
            outcome = train_step(state, forward, lr_b, hr_b, cfg, proc, stop)
            if outcome.skipped:
                log.record({"step": state.step, "skipped_nonfinite": state.skipped})
            log.tick()
            last = state.step == tc.iterations or outcome.over_budget
            if state.step % tc.log_every == 0 or last:
                log.training(state, outcome.loss)
            if proc.main and data.val_idx and (state.step % tc.val_every == 0 or last):
                run_validation(state, data, cfg, proc, log)
            if proc.world > 1 and (state.step % tc.val_every == 0 or last):
                dist.barrier()  # the other ranks wait while rank 0 validates
            stop_now = outcome.stop if proc.world > 1 else stop.signal is not None  # (incl. validation)
            if proc.main and (state.step % tc.checkpoint_every == 0 or stop_now or last):
                saved = save_checkpoint(state, cfg, proc.run_dir)
            if outcome.over_budget and not stop_now:
                log.message(f"time budget {tc.time_budget} reached at step {state.step}")
                break
            if stop_now:
                if proc.main:
                    log.message(f"stopped by a signal at step {state.step}; "
                                f"checkpoint {saved}; resume with --resume auto")
                raise TrainingInterrupted(f"interrupted at step {state.step}; resume with "
                                          f"--resume auto (checkpoint in {proc.run_dir})")
        if proc.main:
            export(state, proc.run_dir, "last",
                   {"val_psnr": state.last_val.get("val_psnr", float("nan"))})
    return TrainResult(proc.run_dir, state.step, state.best_psnr, state.last_val, state.init_report)


# --------------------------------------------------------------------------- set-up steps


def setup_process(device_name: str, run_dir: Path) -> Process:
    """Rank, world size and device; torchrun's environment turns on DDP (as for inference)."""
    shard, device = current_shard(device_name)
    return Process(run_dir, shard.rank, shard.world, resolve_device(device))


def prepare_data(cfg: Config, proc: Process, progress: bool) -> TrainData:
    """Pairs found, split, checked and decoded into the cache by rank 0 before training starts;
    every problem is reported at once."""
    splits = resolve_splits(cfg.data, cfg.train.seed)
    if cfg.data.groups is not None:
        splits.train, splits.val = group_pairs(cfg, splits.train, splits.val)
    if cfg.data.extra_hr:
        splits.train += synthesized_pairs(cfg, splits.train, proc, progress)
    all_pairs = splits.train + splits.val
    if proc.main:
        cache = PairCache(all_pairs, cfg.model.scale, cfg.data.cache_dir, progress=progress,
                          known_problems=splits.problems)
    if proc.world > 1:
        dist.barrier()
    if not proc.main:
        cache = PairCache(all_pairs, cfg.model.scale, cfg.data.cache_dir, progress=False)
    train_idx = list(range(len(splits.train)))
    val_idx = list(range(len(splits.train), len(all_pairs)))
    dataset = CropDataset(cache, train_idx, cfg.data.crop, cfg.model.scale, cfg.train.seed,
                          cfg.data.hflip, cfg.data.rotate)
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


def synthesized_pairs(cfg: Config, train_pairs: list, proc: Process, progress: bool) -> list:
    """Rank 0 fingerprints the training pairs (never the validation ones) and degrades
    ``data.extra_hr`` like them into RUN/synth; every rank then reads the same pairs."""
    from upres.degradation.fingerprint import fingerprint
    from upres.degradation.synth import synthesize_pairs
    from upres.training.data import find_pairs

    folder = proc.run_dir / "synth"
    if proc.main and not (folder / "synth.json").exists():
        fp, _ = fingerprint(train_pairs, cfg.model.scale, cfg.data.cache_dir, progress=progress)
        fp.save(proc.run_dir / "fingerprint.json")
        synthesize_pairs(cfg.data.extra_hr, fp, folder, cfg.train.seed, cfg.data.crop)
    if proc.world > 1:
        dist.barrier()
    pairs, problems = find_pairs(folder / "lr", folder / "hr")
    if problems:
        raise DataError(f"{folder}: " + "; ".join(problems))
    return pairs


def write_run_files(cfg: Config, run_dir: Path, command: list[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / "config.yaml", dump_config(cfg).encode())
    atomic_write_bytes(run_dir / "command.txt", (" ".join(command) + "\n").encode())


def make_optimizer(model: nn.Module, tc) -> torch.optim.Optimizer:
    opt_cls = torch.optim.Adam if tc.optimizer == "adam" else torch.optim.AdamW
    return opt_cls(model.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, tc) -> torch.optim.lr_scheduler.LRScheduler:
    if tc.scheduler == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, tc.milestones, tc.gamma)
    if tc.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, tc.iterations, tc.min_lr)
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


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
    model.to(device)
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if tc.ema > 0 else None
    optimizer = make_optimizer(model, tc)
    return TrainState(model, ema, optimizer, make_scheduler(optimizer, tc),
                      torch.amp.GradScaler(device.type, enabled=tc.precision == "fp16"),
                      amp_dtype, init_report=init_report)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    return found[-1] if found else None


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's contents (tensors only, never arbitrary pickles), or a named error."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({str(err).splitlines()[0]})") from None
    missing = {"step", "model", "optimizer", "scheduler", "scaler", "rng_cpu"} - set(saved)
    if missing:
        raise CheckpointError(f"{path}: not an upres checkpoint (missing {', '.join(sorted(missing))})")
    return saved


def resume_state(state: TrainState, run_dir: Path, resume: str, cfg: Config,
                 proc: Process) -> Path | None:
    """Restore model, EMA, optimiser, schedule, scaler, RNG and step (the data order follows the
    step). ``auto`` takes the newest intact checkpoint of the run folder, passing over damaged
    ones with a warning (None in a new run); a path must be readable."""
    if resume != "auto":
        path, saved = Path(resume), read_checkpoint(Path(resume))
    else:
        path = saved = None
        candidates = sorted((run_dir / "checkpoints").glob("step_*.pt"), reverse=True)
        for candidate in candidates:
            try:
                path, saved = candidate, read_checkpoint(candidate)
                break
            except CheckpointError as err:
                if proc.main:
                    print(f"warning: {err}; trying an older checkpoint", file=sys.stderr)
        if saved is None and candidates:
            raise CheckpointError(f"{run_dir / 'checkpoints'}: no intact checkpoint to resume "
                                  "from; move the folder away to start afresh")
        if saved is None:
            return None
    _restore(state, saved, path, cfg, proc)
    return path


def _restore(state: TrainState, saved: dict, path: Path, cfg: Config, proc: Process) -> None:
    state.model.load_state_dict(saved["model"])
    if state.ema is not None:
        state.ema.load_state_dict(saved["ema"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["rng_cpu"])
    state.step, state.best_psnr = int(saved["step"]), float(saved["best_psnr"])
    if proc.main:
        print(f"resumed from {path} at step {state.step}", file=sys.stderr)
        if saved.get("config") != dump_config(cfg):
            print("warning: the checkpoint was written with a different configuration; "
                  "continuing with the current one", file=sys.stderr)


def wrap_model(model: nn.Module, cfg: Config, proc: Process) -> nn.Module:
    """DDP across processes, then ``torch.compile`` if asked."""
    net = model
    if proc.world > 1:
        ids = [proc.device.index] if proc.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return torch.compile(net) if cfg.train.compile else net


def make_loader(dataset: CropDataset, cfg: Config, proc: Process, start_step: int) -> DataLoader:
    """Batches for the steps still to run; the sampler makes them depend on (seed, step) only."""
    tc = cfg.train
    sampler = StepSampler(tc.batch_size, start_step, proc.rank, proc.world, tc.iterations - start_step)
    return DataLoader(dataset, batch_size=tc.batch_size, sampler=sampler,
                      num_workers=cfg.data.workers, pin_memory=proc.device.type == "cuda",
                      persistent_workers=False, prefetch_factor=4 if cfg.data.workers else None)


# --------------------------------------------------------------------------- loop steps


def loss_fn(name: str, sr: torch.Tensor, hr: torch.Tensor, eps: float) -> torch.Tensor:
    if name == "mse":
        return F.mse_loss(sr, hr)
    if name == "l1":
        return F.l1_loss(sr, hr)
    return torch.sqrt((sr - hr) ** 2 + eps * eps).mean()  # charbonnier


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
               cfg: Config, proc: Process, stop: StopFlag) -> StepOutcome:
    """One optimiser step on a batch, or a skipped batch where the loss is not finite."""
    tc, device = cfg.train, proc.device
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
    if proc.world > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    nonfinite, stop_now, over = (bool(v) for v in flags.tolist())
    if nonfinite and tc.nonfinite == "stop":
        raise TrainingError(
            f"step {state.step}: the {tc.loss} loss is {loss.item()} (non-finite); stopped "
            f"without saving. Last good checkpoint: {latest_checkpoint(proc.run_dir) or 'none yet'}. "
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
        ema_update(state.ema, state.model, tc.ema)
    return StepOutcome(loss, nonfinite, stop_now, over)


def validate(model: nn.Module, cache: PairCache, indices: list[int], cfg: Config,
             device: torch.device, bicubic_psnr: float | None = None) -> dict:
    """Mean PSNR (RGB and Y) and SSIM over the validation pairs, on uint8-rounded outputs of the
    same inference path as ``upscale``; bicubic scored beside it (unless already known)."""
    was_training = model.training
    up = Upscaler(model, device=str(device), dtype="fp32", channels_last=cfg.train.channels_last,
                  tile=cfg.val.tile, tile_overlap=cfg.val.tile_overlap,
                  self_ensemble=cfg.val.self_ensemble, backend=cfg.val.backend,
                  cache_converted=False)
    border = cfg.model.scale if cfg.val.crop_border is None else cfg.val.crop_border
    scores = {"psnr": [], "psnr_y": [], "ssim": []}
    bic = []
    for i in indices:
        lr, hr = cache.load(i, mmap=False)
        sr = up.upscale_array(lr)
        scores["psnr"].append(metrics.psnr(sr, hr, border))
        scores["psnr_y"].append(metrics.psnr(sr, hr, border, y_channel=True))
        scores["ssim"].append(metrics.ssim(sr, hr, border))
        if bicubic_psnr is None:
            bic.append(metrics.psnr(metrics.bicubic_upscale(lr, cfg.model.scale), hr, border))
    model.train(was_training)
    result = {f"val_{k}": float(np.mean(v)) for k, v in scores.items()}
    result["bicubic_psnr"] = float(np.mean(bic)) if bicubic_psnr is None else bicubic_psnr
    return result


def run_validation(state: TrainState, data: TrainData, cfg: Config, proc: Process,
                   log: RunLog) -> None:
    """Validate the EMA weights, log the scores, export ``best.*`` when they improve."""
    state.last_val = validate(state.eval_model, data.cache, data.val_idx, cfg, proc.device,
                              data.bicubic_psnr)
    data.bicubic_psnr = state.last_val["bicubic_psnr"]
    val = state.last_val
    log.record({"step": state.step, **val, "train_seconds": round(time.monotonic() - state.started, 2)})
    log.message(f"step {state.step}: val PSNR {val['val_psnr']:.3f} dB "
                f"(Y {val['val_psnr_y']:.3f}, SSIM {val['val_ssim']:.4f}; "
                f"bicubic {val['bicubic_psnr']:.3f})")
    if val["val_psnr"] > state.best_psnr:
        state.best_psnr = val["val_psnr"]
        export(state, proc.run_dir, "best", {"val_psnr": state.best_psnr})


def save_checkpoint(state: TrainState, cfg: Config, run_dir: Path) -> Path:
    """Everything needed for an exact resume, written atomically; old ones pruned."""
    path = run_dir / "checkpoints" / f"step_{state.step:09d}.pt"
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


def export(state: TrainState, run_dir: Path, name: str, extra: dict) -> None:
    """``NAME.safetensors`` (with metadata) and a BasicSR-style ``NAME.pth`` of the EMA weights."""
    for suffix in (".safetensors", ".pth"):
        save_model(state.eval_model, run_dir / f"{name}{suffix}", extra={"step": state.step, **extra})


# --------------------------------------------------------------------------- logging, signals


class RunLog:
    """``metrics.jsonl``, TensorBoard curves and the progress bar, written by rank 0 only and
    closed on every exit path (a context manager). After a resume, what the interrupted run
    logged past its checkpoint is dropped (TensorBoard ``purge_step``, ``metrics.jsonl``), so
    each step appears once."""

    def __init__(self, proc: Process, iterations: int, step: int, resumed: bool,
                 progress: bool) -> None:
        self.proc, self.iterations, self.step, self.resumed = proc, iterations, step, resumed
        self.progress = progress
        self.writer = self.file = self.bar = None
        self.start_clock()

    def __enter__(self) -> RunLog:
        from tqdm import tqdm

        self.bar = tqdm(total=self.iterations, initial=self.step, desc="train", unit="it",
                        disable=not (self.proc.main and self.progress), dynamic_ncols=True)
        if self.proc.main:
            from torch.utils.tensorboard import SummaryWriter

            run_dir = self.proc.run_dir
            self.writer = SummaryWriter(str(run_dir / "tb"),
                                        purge_step=self.step + 1 if self.resumed else None)
            log_path = run_dir / "metrics.jsonl"
            if self.resumed and log_path.exists():
                kept = [line for line in log_path.read_text().splitlines()
                        if line.strip() and json.loads(line)["step"] <= self.step]
                atomic_write_bytes(log_path, "".join(f"{line}\n" for line in kept).encode())
            self.file = open(log_path, "a")
        return self

    def __exit__(self, *exc) -> None:
        for thing in (self.bar, self.writer, self.file):
            if thing is not None:
                thing.close()

    def start_clock(self) -> None:
        self.tick_time, self.tick_step = time.perf_counter(), self.step

    def record(self, record: dict) -> None:
        if not self.proc.main:
            return
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as err:
            if out_of_space(err, self.proc.run_dir):
                raise DiskFullError(f"no space left on device while writing {self.file.name}") from err
            raise
        for key, value in record.items():
            if key != "step":
                self.writer.add_scalar(key, value, record["step"])

    def tick(self) -> None:
        self.step += 1
        self.bar.update(1)

    def training(self, state: TrainState, loss: torch.Tensor) -> None:
        """Loss, learning rate and steps per second since the last record."""
        now = time.perf_counter()
        rate = (state.step - self.tick_step) / max(now - self.tick_time, 1e-9)
        self.tick_time, self.tick_step = now, state.step
        lr_now = state.scheduler.get_last_lr()[0]
        self.bar.set_postfix(loss=f"{loss.item():.4g}", lr=f"{lr_now:.2e}")
        self.record({"step": state.step, "loss": loss.item(), "lr": lr_now, "it_per_s": rate})

    def message(self, text: str) -> None:
        self.bar.write(text)


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the end of the step and stops."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old = {}

    def __enter__(self) -> StopFlag:
        if sys.platform != "win32" and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
