"""Inference speed on this machine: eager fp32 NCHW (the BasicSR / Real-ESRGAN path) against
upres's default path and each dtype / layout option, plus self-ensemble x8 against one pass.

    python benchmarks/bench_inference.py [--model realesrgan-x4plus] [--size 256] [--repeat 1]

Every figure comes from this one run, on the same model and input; speed-ups are against the
faster of the two eager fp32 measurements (first and last).
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from skimage import data

from upres.inference.engine import resolve_device
from upres.inference.upscaler import Upscaler
from upres.io.loading import load_model
from upres.models import describe
from upres.scoring.metrics import psnr_float


def timed(fn, repeat: int, warmup=None) -> tuple[float, np.ndarray]:
    """Best of ``repeat`` runs, after one small warm-up call (oneDNN builds kernels on first use)."""
    if warmup is not None:
        warmup()
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="realesrgan-x4plus")
    parser.add_argument("--size", type=int, default=256, help="input side in pixels")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the best is kept")
    parser.add_argument("--skip-ensemble", action="store_true")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (eager runs there too)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    model = load_model(args.model).to(device)
    photo = data.astronaut()  # a real 512x512 photo shipped by scikit-image
    img = photo[:args.size, 64:64 + args.size].astype(np.float32) / 255
    x = torch.from_numpy(img.transpose(2, 0, 1).copy())[None].to(device)
    out_mp = (args.size * describe(model).scale) ** 2 / 1e6
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, "
          f"model {args.model}, "
          f"input {args.size}x{args.size}, output {out_mp:.2f} MP")

    def eager(inp=x):
        with torch.inference_mode():
            out = model(inp)[0].permute(1, 2, 0).float().cpu().numpy()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    small = img[:32, :32]
    base_s, ref = timed(eager, args.repeat, lambda: eager(x[..., :32, :32]))
    rows = [("eager fp32 NCHW (BasicSR path)", base_s, None)]
    # each case gets its own copy of the model, so no layout leaks from one case into the next
    default = Upscaler(copy.deepcopy(model), device=str(device))
    cases = [(f"upres default ({str(default.dtype).replace('torch.', '')}, "
              f"{'channels_last' if default.options.channels_last else 'NCHW'})", default)]
    for dtype in ("fp32", "bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16"):
        for cl in (False, True):
            up = Upscaler(copy.deepcopy(model), device=str(device), dtype=dtype, channels_last=cl)
            cases.append((f"upres {dtype} {'channels_last' if cl else 'NCHW'}", up))
    outputs = {}
    for name, up in cases:
        seconds, out = timed(lambda up=up: up.upscale_float(img), args.repeat,
                             lambda up=up: up.upscale_float(small))
        outputs[name] = out
        rows.append((name, seconds, psnr_float(out, ref)))
    # eager again, last: the first large run of a process pays for page faults and allocator growth
    again_s, _ = timed(eager, args.repeat)
    rows.append(("eager fp32 NCHW, measured again last", again_s, None))
    base_s = min(base_s, again_s)
    print(f"{'case':44s} {'seconds':>8s} {'MP/s':>7s} {'speed-up':>8s} {'PSNR vs fp32':>12s}")
    for name, seconds, psnr in rows:
        shown = "(reference)" if psnr is None else f"{psnr:.1f} dB"
        print(f"{name:44s} {seconds:8.2f} {out_mp / seconds:7.3f} {base_s / seconds:7.2f}x "
              f"{shown:>12s}")
    if not args.skip_ensemble:
        one = rows[1][1]
        ens = Upscaler(copy.deepcopy(model), device=str(device), self_ensemble="mean")
        seconds, _ = timed(lambda: ens.upscale_float(img), args.repeat,
                           lambda: ens.upscale_float(small))
        print(f"{'self-ensemble x8 (mean), default path':44s} {seconds:8.2f} "
              f"{out_mp / seconds:7.3f}   {seconds / one:.2f}x the time of one default pass")


if __name__ == "__main__":
    main()
