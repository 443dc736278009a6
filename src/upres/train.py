"""The PSNR training recipe, top to bottom in one function: data, model, optimiser, loop,
validation on the EMA weights through the ``upscale`` inference path, atomic checkpoints,
exact resume, and DDP under torchrun (rank 0 alone writes files).

Launch: ``upres train CONFIG.yaml`` (one process) or
``torchrun --nproc_per_node N -m upres.cli train CONFIG.yaml`` (N processes; NCCL on GPUs,
gloo on CPUs)."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from upres import metrics
from upres.arch import build_model
from upres.config import Config, dump_config
from upres.data import CropDataset, PairCache, StepSampler, bicubic_upscale, resolve_splits
from upres.fileio import atomic_path, atomic_write_bytes
from upres.inference import Upscaler, autocast_context, resolve_device, resolve_dtype
from upres.weights import load_matching, load_weights, save_model


class TrainingError(RuntimeError):
    """Training stopped on purpose (non-finite loss); the message says where and why."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM: a checkpoint was written and the run can be resumed."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_psnr: float
    last_val: dict = field(default_factory=dict)
    init_report: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- pieces


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


def make_scheduler(opt: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.scheduler == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, cfg.milestones, cfg.gamma)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.iterations, cfg.min_lr)
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    return found[-1] if found else None


def validate(model: nn.Module, cache: PairCache, indices: list[int], cfg: Config,
             device: torch.device, bicubic: dict | None = None) -> dict:
    """Mean PSNR (RGB and Y) and SSIM over the validation pairs, on uint8-rounded outputs of the
    same inference path as ``upscale``; bicubic scored beside it."""
    was_training = model.training
    up = Upscaler(model, device=str(device), dtype="fp32", channels_last=cfg.train.channels_last,
                  tile=cfg.val.tile, tile_overlap=cfg.val.tile_overlap,
                  self_ensemble=cfg.val.self_ensemble)
    border = cfg.model.scale if cfg.val.crop_border is None else cfg.val.crop_border
    scores = {"psnr": [], "psnr_y": [], "ssim": []}
    bic = []
    for i in indices:
        lr, hr = cache.load(i, mmap=False)
        sr = up.upscale_array(lr)
        scores["psnr"].append(metrics.psnr(sr, hr, border))
        scores["psnr_y"].append(metrics.psnr(sr, hr, border, y_channel=True))
        scores["ssim"].append(metrics.ssim(sr, hr, border))
        if bicubic is None:
            bic.append(metrics.psnr(bicubic_upscale(lr, cfg.model.scale), hr, border))
    model.train(was_training)
    result = {f"val_{k}": float(np.mean(v)) for k, v in scores.items()}
    result["bicubic_psnr"] = float(np.mean(bic)) if bicubic is None else bicubic["bicubic_psnr"]
    return result


def _setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """Rank, world size and device; torchrun's environment turns on DDP."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, resolve_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, torch.device("cuda", local) if use_cuda else torch.device("cpu")


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the end of the step and stops."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        if sys.platform != "win32" and __import__("threading").current_thread() is \
                __import__("threading").main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- the recipe


def train(cfg: Config, run_dir: str | Path, resume: str | None = None,
          command: list[str] | None = None, progress: bool = True) -> TrainResult:
    tc = cfg.train
    rank, world, device = _setup_distributed(tc.device)
    main = rank == 0
    run_dir = Path(run_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "config.yaml", dump_config(cfg).encode())
        atomic_write_bytes(run_dir / "command.txt",
                           (" ".join(command or sys.argv) + "\n").encode())

    # Data: every pair is checked (and decoded into the cache) by rank 0 before training starts.
    splits = resolve_splits(cfg.data, tc.seed)
    all_pairs = splits.train + splits.val
    if main:
        cache = PairCache(all_pairs, cfg.model.scale, cfg.data.cache_dir, progress=progress,
                          known_problems=splits.problems)
    if world > 1:
        dist.barrier()
    if not main:
        cache = PairCache(all_pairs, cfg.model.scale, cfg.data.cache_dir, progress=False)
    train_idx = list(range(len(splits.train)))
    val_idx = list(range(len(splits.train), len(all_pairs)))
    dataset = CropDataset(cache, train_idx, cfg.data.crop, cfg.model.scale, tc.seed,
                          cfg.data.hflip, cfg.data.rotate)

    # Model, EMA copy, optimiser, schedule.
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model.arch, cfg.model.hparams())
    init_report = {}
    if cfg.init.source:
        init_report = load_matching(model, load_weights(cfg.init.source), cfg.init.strict)
        init_report["source"] = cfg.init.source
    model.to(device)
    if tc.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if tc.ema > 0 else None
    opt_cls = torch.optim.Adam if tc.optimizer == "adam" else torch.optim.AdamW
    optimizer = opt_cls(model.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    scheduler = make_scheduler(optimizer, tc)
    scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "fp16")
    amp_dtype = resolve_dtype(tc.precision, device)  # the same rules as inference: fp16 is CUDA-only

    # Resume: model, EMA, optimiser, schedule, scaler, RNG, step (the data order follows the step).
    step, best_psnr = 0, -math.inf
    ckpt_path = latest_checkpoint(run_dir) if resume == "auto" else (Path(resume) if resume else None)
    if ckpt_path is not None:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        step, best_psnr = int(state["step"]), float(state["best_psnr"])
        if main:
            print(f"resumed from {ckpt_path} at step {step}", file=sys.stderr)
            if state.get("config") != dump_config(cfg):
                print("warning: the checkpoint was written with a different configuration; "
                      "continuing with the current one", file=sys.stderr)

    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                              else None) if world > 1 else model
    forward = torch.compile(net) if tc.compile else net
    loader = DataLoader(dataset, batch_size=tc.batch_size,
                        sampler=StepSampler(tc.batch_size, step, rank, world, tc.iterations - step),
                        num_workers=cfg.data.workers, pin_memory=device.type == "cuda",
                        persistent_workers=False, prefetch_factor=4 if cfg.data.workers else None)

    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter
        # After a resume, drop what the interrupted run logged past its checkpoint, in the
        # TensorBoard curves (purge_step) and in metrics.jsonl, so each step appears once.
        writer = SummaryWriter(str(run_dir / "tb"), purge_step=step + 1 if ckpt_path else None)
        log_path = run_dir / "metrics.jsonl"
        if ckpt_path is not None and log_path.exists():
            kept = [line for line in log_path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= step]
            atomic_write_bytes(log_path, "".join(f"{line}\n" for line in kept).encode())
    metrics_file = open(run_dir / "metrics.jsonl", "a") if main else None
    bicubic = None
    last_val: dict = {}

    def log(record: dict) -> None:
        if not main:
            return
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
        for key, value in record.items():
            if key != "step":
                writer.add_scalar(key, value, record["step"])

    def export(name: str, extra: dict) -> None:
        weights_model = ema if ema is not None else model
        for suffix in (".safetensors", ".pth"):
            save_model(weights_model, run_dir / f"{name}{suffix}", extra={"step": step, **extra})

    def checkpoint() -> Path:
        path = run_dir / "checkpoints" / f"step_{step:09d}.pt"
        state = {"step": step, "best_psnr": best_psnr, "model": model.state_dict(),
                 "ema": ema.state_dict() if ema is not None else {},
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict(), "rng_cpu": torch.get_rng_state(),
                 "config": dump_config(cfg)}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        for old in sorted(path.parent.glob("step_*.pt"))[:-tc.keep_checkpoints]:
            old.unlink()
        return path

    def run_validation() -> None:
        nonlocal last_val, bicubic, best_psnr
        last_val = validate(ema if ema is not None else model, cache, val_idx, cfg, device, bicubic)
        bicubic = {"bicubic_psnr": last_val["bicubic_psnr"]}
        log({"step": step, **last_val})
        bar.write(f"step {step}: val PSNR {last_val['val_psnr']:.3f} dB "
                  f"(Y {last_val['val_psnr_y']:.3f}, SSIM {last_val['val_ssim']:.4f}; "
                  f"bicubic {last_val['bicubic_psnr']:.3f})")
        if last_val["val_psnr"] > best_psnr:
            best_psnr = last_val["val_psnr"]
            export("best", {"val_psnr": best_psnr})

    from tqdm import tqdm
    bar = tqdm(total=tc.iterations, initial=step, desc="train", unit="it",
               disable=not (main and progress), dynamic_ncols=True)
    model.train()
    if main and val_idx and tc.val_at_start and step == 0:
        run_validation()
    skipped, tick, tick_step = 0, time.perf_counter(), step
    try:
        with _StopFlag() as stop:
            for lr_b, hr_b in loader:
                step += 1
                lr_b = lr_b.to(device, non_blocking=True)
                hr_b = hr_b.to(device, non_blocking=True)
                if tc.channels_last:
                    lr_b = lr_b.contiguous(memory_format=torch.channels_last)
                with autocast_context(device, amp_dtype):
                    sr = forward(lr_b)
                loss = loss_fn(tc.loss, sr.float(), hr_b, tc.charbonnier_eps)
                # One small all-reduce keeps the ranks in step: any rank's non-finite loss or
                # stop signal applies to all, so no rank waits forever for another.
                flags = torch.stack([(~torch.isfinite(loss.detach())).to(torch.int32).reshape(()),
                                     torch.tensor(int(stop.signal is not None), device=device)])
                if world > 1:
                    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                nonfinite, stop_now = (bool(v) for v in flags.tolist())
                if nonfinite:
                    if tc.nonfinite == "stop":
                        last = latest_checkpoint(run_dir)
                        raise TrainingError(
                            f"step {step}: the {tc.loss} loss is {loss.item()} (non-finite); "
                            f"stopped without saving. Last good checkpoint: {last or 'none yet'}. "
                            "Set train.nonfinite: skip to skip such batches instead")
                    skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    log({"step": step, "skipped_nonfinite": skipped})
                else:
                    scaler.scale(loss).backward()
                    if tc.grad_clip:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    if ema is not None:
                        ema_update(ema, model, tc.ema)
                bar.update(1)
                if step % tc.log_every == 0 or step == tc.iterations:
                    now = time.perf_counter()
                    rate = (step - tick_step) / max(now - tick, 1e-9)
                    tick, tick_step = now, step
                    lr_now = scheduler.get_last_lr()[0]
                    bar.set_postfix(loss=f"{loss.item():.4g}", lr=f"{lr_now:.2e}")
                    log({"step": step, "loss": loss.item(), "lr": lr_now, "it_per_s": rate})
                if main and val_idx and (step % tc.val_every == 0 or step == tc.iterations):
                    run_validation()
                if world > 1 and step % tc.val_every == 0:
                    dist.barrier()
                if world == 1:
                    stop_now = stop.signal is not None
                if main and (step % tc.checkpoint_every == 0 or stop_now or step == tc.iterations):
                    saved = checkpoint()
                if stop_now:
                    if main:
                        bar.write(f"stopped by a signal at step {step}; "
                                  f"checkpoint {saved}; resume with --resume auto")
                    raise TrainingInterrupted(f"interrupted at step {step}; resume with "
                                              f"--resume auto (checkpoint in {run_dir})")
        if main:
            export("last", {"val_psnr": last_val.get("val_psnr", float("nan"))})
    finally:
        bar.close()
        if main:
            writer.close()
            metrics_file.close()
    return TrainResult(run_dir, step, best_psnr, last_val, init_report)
