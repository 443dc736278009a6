"""The CUDA paths on a GPU, each against fp32 in the same run: inference of x4plus in fp32 NCHW
(the baseline, itself checked against the CPU), channels_last, fp16, bf16 and torch.compile; and
the training loop (fine-tuning x4plus) in fp32, fp16 with its GradScaler, bf16, channels_last and
compile: seconds per image or step, the ratio to the baseline, and how far each result is from it.

    python benchmarks/bench_cuda.py DATA [--device cuda] [--steps 60] [--side 256] [--out F.json]

DATA is a competition folder (train/lr, train/hr), e.g. ../shared/data/minicomp. On a machine
without CUDA, ``--device cpu`` runs the same code paths that exist there (a dry run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import records
from upres.inference.upscaler import Upscaler
from upres.io import images
from upres.io.pairs import find_pairs
from upres.scoring.metrics import psnr
from upres.training.config import load_config
from upres.training.loop import train

# (name, dtype, channels_last, compile); the first is the baseline
INFERENCE = [("fp32 NCHW", "fp32", False, False), ("fp32 channels_last", "fp32", True, False),
             ("fp16 channels_last", "fp16", True, False), ("bf16 channels_last", "bf16", True, False),
             ("fp16 channels_last compiled", "fp16", True, True)]
TRAINING = [("fp32 NCHW", "fp32", False, False), ("fp16 NCHW (GradScaler)", "fp16", False, False),
            ("bf16 NCHW", "bf16", False, False), ("fp16 channels_last", "fp16", True, False),
            ("fp16 channels_last compiled", "fp16", True, True)]


def usable(variants: list, device: str) -> list:
    """fp16 runs on CUDA only (a CPU dry run leaves it out)."""
    return [v for v in variants if device.startswith("cuda") or v[1] != "fp16"]


def timed(fn, repeats: int) -> tuple[float, np.ndarray]:
    """Median seconds of ``repeats`` calls after two warm-ups, and the last result."""
    out = fn()
    out = fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()  # a numpy array: the device has finished
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), out


def inference_rows(lr: np.ndarray, device: str, repeats: int) -> list[dict]:
    """Each variant's seconds per image and PSNR against the fp32 NCHW output; the baseline is
    also compared with the CPU on a 48x48 corner (same weights, fp32)."""
    rows, base = [], None
    for name, dtype, channels_last, compiled in usable(INFERENCE, device):
        up = Upscaler("realesrgan-x4plus", device=device, dtype=dtype, channels_last=channels_last,
                      compile=compiled, tile=0, backend="torch")
        seconds, out = timed(lambda up=up: up.upscale_array(lr), repeats)
        row = {"variant": name, "ms_per_image": round(seconds * 1000, 2)}
        if base is None:
            base = (seconds, out)
            cpu = Upscaler("realesrgan-x4plus", device="cpu", dtype="fp32", tile=0, backend="torch")
            corner = lr[:48, :48]
            row["max_diff_vs_cpu_fp32"] = int(np.abs(cpu.upscale_array(corner).astype(int)
                                                     - up.upscale_array(corner)).max())
        row["ratio_to_fp32"] = round(base[0] / seconds, 2)
        row["psnr_vs_fp32_db"] = round(psnr(out, base[1]), 2) if out is not base[1] else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def training_rows(data: Path, device: str, steps: int, crop: int, batch: int) -> list[dict]:
    """Each variant fine-tunes x4plus for ``steps`` from the same seed: its steps per second
    (median of the logged rates after the first), last loss and final validation PSNR."""
    rows, base = [], None
    for name, precision, channels_last, compiled in usable(TRAINING, device):
        cfg = load_config("finetune-cpu", [
            f"data.root={data}", f"data.crop={crop}", "data.val_split=4", "data.workers=4",
            f"train.iterations={steps}", f"train.batch_size={batch}", f"train.precision={precision}",
            f"train.channels_last={str(channels_last).lower()}", f"train.compile={str(compiled).lower()}",
            f"train.device={device}", "train.log_every=10", "train.val_at_start=false",
            f"train.val_every={steps}", f"train.checkpoint_every={steps}", "train.time_budget=null"])
        with tempfile.TemporaryDirectory() as tmp:
            result = train(cfg, Path(tmp) / "run", progress=False)
            log = [json.loads(line) for line in (Path(tmp) / "run/metrics.jsonl").read_text().splitlines()]
        rates = [r["it_per_s"] for r in log if "it_per_s" in r]
        rates = rates[1:] or rates  # the first holds the warm-up (and compilation)
        losses = [r["loss"] for r in log if "loss" in r]
        row = {"variant": name, "steps_per_s": round(statistics.median(rates), 2),
               "last_loss": round(losses[-1], 6), "val_psnr": round(result.best_psnr, 3)}
        base = base or row
        row["ratio_to_fp32"] = round(row["steps_per_s"] / base["steps_per_s"], 2)
        row["val_psnr_vs_fp32_db"] = round(row["val_psnr"] - base["val_psnr"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--side", type=int, default=256, help="LR side of the inference image")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--crop", type=int, default=256, help="HR crop of the training steps")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.device.startswith("cuda"):
        print(f"{torch.cuda.get_device_name(args.device)}, torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}", flush=True)
    lr = images.read_image(find_pairs(args.data / "train/lr", args.data / "train/hr")[0][0].lr)
    lr = np.ascontiguousarray(lr[:args.side, :args.side, :3])
    report = {"device": args.device, "torch": torch.__version__,
              "inference": inference_rows(lr, args.device, args.repeats),
              "training": training_rows(args.data, args.device, args.steps, args.crop, args.batch)}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    gpu = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else args.device
    for part in ("inference", "training"):
        for row in report[part]:
            figures = {k: v for k, v in row.items() if k != "variant" and v is not None}
            records.append("cuda", {"part": part, "variant": row["variant"]}, figures, device=gpu,
                           note=f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
