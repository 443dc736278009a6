"""Training steps against this CPU's peak: for RRDBNet (x4plus) and each small PSNR family's
preset, one training step (forward, MSE, backward, Adam) at the crop and batch ``upres auto``
picked for it on minicomp (15 minutes, d9fe5a0), in fp32 and in bf16 autocast with
channels_last (what ``train.precision auto`` runs on a CPU with native bf16); the step's FLOPs
counted by ``torch.utils.flop_counter``, and their rate as a share of this CPU's bf16 and fp32
matmul peaks measured in the same run. Then the top operators of a bf16 step by self CPU time
(``torch.profiler``): where the rest goes. Then the levers over that bf16 step, each
timed in the same run: Adam's fused CPU kernel, and ``torch.compile`` (inductor, no freezing),
whose first batch is checked against eager as ``train.compile`` checks it, with its compile
time. ``--crops 128,256`` times the same steps at larger crops (the same batch), and the model
``rrdbnet-dense-convs`` is RRDBNet's five dense-block convolutions alone: what bounds x4plus.

    python benchmarks/bench_train_peak.py [--steps 5] [--models rrdbnet-x4plus,imdn,...]
                                          [--variants fp32,bf16,fused,compile] [--crops 64,128]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

import records
from bench_inference import matmul_peak
from upres.models.registry import build_model, hyperparameters
from upres.training.compiled import check_compiled

# (crop, batch) that `upres auto` chose for each start on minicomp at 15 minutes (d9fe5a0)
PICKED = {"rrdbnet-x4plus": ("RRDBNet", None, 64, 4), "imdn": ("IMDN", None, 192, 16),
          "rfdn-ntire": ("RFDN", "rfdn-ntire", 192, 16), "rlfn-ntire": ("RLFN", "rlfn-ntire", 192, 32),
          "bsrn-s": ("BSRN", "bsrn-s", 192, 16), "safmnpp": ("SAFMNPP", "safmnpp", 192, 32),
          "safmn23": ("SAFMN23", "safmn23", 256, 16), "span-ch28": ("SPANFused", "span-ch28", 256, 32),
          "craft": ("CRAFT", "craft", 64, 4), "rrdbnet-dense-convs": (None, None, 64, 4)}


VARIANTS = {"fp32": "fp32", "bf16": "bf16+channels_last", "fused": "bf16+channels_last+fused Adam",
            "compile": "bf16+channels_last+compile"}


def step_fn(model, crop: int, batch: int, variant: str):
    """One training step on random crops, as the loop runs it; for ``compile`` also the check of
    the compiled network against eager on this batch (``upres.training.compiled``)."""
    bf16 = variant != "fp32"
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=variant == "fused")
    lr = torch.rand(batch, 3, crop // 4, crop // 4)
    hr = torch.rand(batch, 3, crop, crop)
    if bf16:
        model = model.to(memory_format=torch.channels_last)
        lr = lr.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if variant == "compile" else model
    check, compile_s = None, 0.0
    if variant == "compile":  # the first compiled call compiles
        start = time.perf_counter()
        check = check_compiled(model, net, model, lr, hr, F.mse_loss, torch.bfloat16)
        compile_s = time.perf_counter() - start

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.mse_loss(net(lr).float(), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, check, compile_s


def dense_convs_step(crop: int, batch: int, variant: str):
    """Forward and backward (weights and inputs) of one residual dense block's five convolutions
    (64 features, growth 32: inputs of 64 to 192 channels) on tensors of their widths at the LR
    crop's size, without the concatenations, activations and optimizer around them: ~93% of
    x4plus's FLOPs are these convolutions, so their rate is the ceiling of its step."""
    bf16 = variant != "fp32"
    widths = [64 + 32 * i for i in range(5)]
    outs = [32] * 4 + [64]
    convs = torch.nn.ModuleList(torch.nn.Conv2d(w, out, 3, 1, 1) for w, out in zip(widths, outs))
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    convs = convs.to(memory_format=fmt)
    side = crop // 4
    inputs = [torch.rand(batch, w, side, side).contiguous(memory_format=fmt).requires_grad_() for w in widths]

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = sum(conv(x).float().square().mean() for conv, x in zip(convs, inputs))
        convs.zero_grad(set_to_none=True)
        for x in inputs:
            x.grad = None
        loss.backward()

    return step, None, 0.0


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
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--crops", default="", help="HR crops to time instead of auto's (same batch)")
    args = parser.parse_args()
    bf16_peak, fp32_peak = matmul_peak(torch.bfloat16), matmul_peak(torch.float32)
    print(f"{torch.get_num_threads()} threads; matmul peak bf16 {bf16_peak:.0f} GFLOP/s, fp32 "
          f"{fp32_peak:.0f} GFLOP/s")
    for name in args.models.split(","):
        arch, preset, picked_crop, batch = PICKED[name]
        for crop in [int(c) for c in args.crops.split(",")] if args.crops else [picked_crop]:
            measure(name, arch, preset, crop, batch, args.variants.split(","), args.steps, bf16_peak,
                    fp32_peak)


def measure(name: str, arch: str | None, preset: str | None, crop: int, batch: int, keys: list[str],
            steps: int, bf16_peak: float, fp32_peak: float) -> None:
    """Time, count and record each variant's step for one model at one crop x batch."""
    base, gflop = None, None
    for key in keys:
        torch.manual_seed(0)
        if arch is None:  # the dense-block convolutions alone: no optimizer, so no fused/compile
            if key not in ("fp32", "bf16"):
                continue
            step, check, compile_s = dense_convs_step(crop, batch, key)
        else:
            model = build_model(arch, hyperparameters(arch, 4, preset)).train()
            step, check, compile_s = step_fn(model, crop, batch, key)
        seconds = timed(step, steps if arch else 20 * steps)  # one block's step is milliseconds
        if gflop is None:  # the same arithmetic in every variant: counted once, eager
            gflop = flops(step) / 1e9
        rate = gflop / seconds
        variant = VARIANTS[key]
        ops = top_ops(step) if key == "bf16" else ""
        figures = {"step_s": round(seconds, 4), "gflop": round(gflop, 2), "gflop_s": round(rate, 1),
                   "bf16_peak_gflop_s": round(bf16_peak), "pct_bf16_peak": round(100 * rate / bf16_peak, 1),
                   "pct_fp32_peak": round(100 * rate / fp32_peak, 1)}
        base = seconds if key == "bf16" else base
        if key in ("fused", "compile") and base:
            figures["speedup_vs_bf16"] = round(base / seconds, 3)
        if check is not None:
            figures.update(compile_s=round(compile_s, 1), matches_eager=check.ok,
                           output_rel_error=float(f"{check.output_error:.2e}"),
                           grad_rel_error=float(f"{check.grad_error:.2e}"))
        print(f"{name} crop {crop} x batch {batch}, {variant}: {seconds:.3f} s a step, {gflop:.1f} "
              f"GFLOP, {rate:.0f} GFLOP/s = {100 * rate / bf16_peak:.0f}% of bf16 peak, "
              f"{100 * rate / fp32_peak:.0f}% of fp32's"
              + (f", {figures['speedup_vs_bf16']}x bf16's step" if "speedup_vs_bf16" in figures else "")
              + (f"; compiled in {compile_s:.0f} s, {check.sentence()}" if check else "")
              + (f"; top ops: {ops}" if ops else ""), flush=True)
        records.append("train-peak", {"model": name, "crop": crop, "batch": batch, "variant": variant},
                       {**figures, **({"top_ops": ops} if ops else {})})

if __name__ == "__main__":
    main()
