"""Training steps against this CPU's peak: for RRDBNet (x4plus) and each small PSNR family's
preset, one training step (forward, MSE, backward, Adam) at the crop and batch ``upres auto``
picked for it on minicomp (15 minutes, d9fe5a0), in fp32 and in bf16 autocast with
channels_last (what ``train.precision auto`` runs on a CPU with native bf16); the step's FLOPs
counted by ``torch.utils.flop_counter``, and their rate as a share of this CPU's bf16 and fp32
matmul peaks measured in the same run. Then the top operators of a bf16 step by self CPU time
(``torch.profiler``): where the rest goes.

    python benchmarks/bench_train_peak.py [--steps 5] [--models rrdbnet-x4plus,imdn,...]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

import records
from bench_inference import matmul_peak
from upres.models.registry import build_model, hyperparameters

# (crop, batch) that `upres auto` chose for each start on minicomp at 15 minutes (d9fe5a0)
PICKED = {"rrdbnet-x4plus": ("RRDBNet", None, 64, 4), "imdn": ("IMDN", None, 192, 16),
          "rfdn-ntire": ("RFDN", "rfdn-ntire", 192, 16), "rlfn-ntire": ("RLFN", "rlfn-ntire", 192, 32),
          "bsrn-s": ("BSRN", "bsrn-s", 192, 16), "safmnpp": ("SAFMNPP", "safmnpp", 192, 32),
          "safmn23": ("SAFMN23", "safmn23", 256, 16), "span-ch28": ("SPANFused", "span-ch28", 256, 32),
          "craft": ("CRAFT", "craft", 64, 4)}


def step_fn(model, crop: int, batch: int, bf16: bool):
    """One training step on random crops, as the loop runs it."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    lr = torch.rand(batch, 3, crop // 4, crop // 4)
    hr = torch.rand(batch, 3, crop, crop)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
        lr = lr.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.mse_loss(model(lr).float(), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def timed(step, steps: int) -> float:
    step()  # the first step allocates and picks kernels
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def top_ops(step, count: int = 4) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return ", ".join(f"{e.key} {100 * e.self_cpu_time_total / total:.0f}%" for e in events[:count])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--models", default=",".join(PICKED))
    args = parser.parse_args()
    bf16_peak, fp32_peak = matmul_peak(torch.bfloat16), matmul_peak(torch.float32)
    print(f"{torch.get_num_threads()} threads; matmul peak bf16 {bf16_peak:.0f} GFLOP/s, fp32 "
          f"{fp32_peak:.0f} GFLOP/s")
    for name in args.models.split(","):
        arch, preset, crop, batch = PICKED[name]
        for bf16 in (False, True):
            torch.manual_seed(0)
            model = build_model(arch, hyperparameters(arch, 4, preset)).train()
            step = step_fn(model, crop, batch, bf16)
            seconds = timed(step, args.steps)
            gflop = flops(step) / 1e9
            rate = gflop / seconds
            variant = "bf16+channels_last" if bf16 else "fp32"
            ops = top_ops(step) if bf16 else ""
            print(f"{name} crop {crop} x batch {batch}, {variant}: {seconds:.3f} s a step, {gflop:.1f} "
                  f"GFLOP, {rate:.0f} GFLOP/s = {100 * rate / bf16_peak:.0f}% of bf16 peak, "
                  f"{100 * rate / fp32_peak:.0f}% of fp32's" + (f"; top ops: {ops}" if ops else ""))
            records.append("train-peak", {"model": name, "crop": crop, "batch": batch, "variant": variant},
                           {"step_s": round(seconds, 4), "gflop": round(gflop, 2), "gflop_s": round(rate, 1),
                            "pct_bf16_peak": round(100 * rate / bf16_peak, 1),
                            "pct_fp32_peak": round(100 * rate / fp32_peak, 1),
                            **({"top_ops": ops} if ops else {})})


if __name__ == "__main__":
    main()
