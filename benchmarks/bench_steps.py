"""Many small steps or few large ones: fine-tunes that see the same number of HR pixels (so
about the same CPU time) with different crop x batch, validated on the same pairs; the
question behind ``upres auto``'s ``MIN_STEPS`` (the crop and batch are the most pixels that
still give that many steps in an arm's time).

    python benchmarks/bench_steps.py SET --val NAME,... [--sizes 192x4,128x4,96x4] [--steps 200]

``--steps`` is the step count of the first size; the others get as many as give the same
pixels. SET: a folder with train/lr and train/hr; --val: training pairs held out."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import records
from upres.training import loop
from upres.training.config import load_config


def run_size(args, crop: int, batch: int, steps: int) -> dict:
    """One cosine fine-tune as ``upres auto`` trains an arm (warm EMA, bf16 where native)."""
    every = max(1, steps // 4)  # steps are a multiple of 4: the last step is validated
    cfg = load_config(None, [
        f"data.root={json.dumps(args.set)}", "data.workers=0", f"data.crop={crop}",
        f"train.batch_size={batch}", "train.lr=0.0002", "train.scheduler=cosine",
        "train.warmup=0.03", f"train.iterations={steps}", "train.precision=auto",
        "train.ema=0.99", "train.ema_warmup=true", "train.seed=0", "train.channels_last=true",
        f"train.val_every={every}", f"train.checkpoint_every={10 ** 6}", "model.scale=4",
        "model.arch=RRDBNet", f"init.source={args.init}", "val.dtype=bf16",
        f"data.val_pairs={json.dumps(args.val.split(','))}"])
    curve, run_validation = [], loop.run_validation

    def validate_and_keep(state, data, cfg, run_dir, log):
        run_validation(state, data, cfg, run_dir, log)
        curve.append((state.step, state.last_val["val_psnr"]))

    loop.run_validation = validate_and_keep
    began = time.monotonic()
    try:
        loop.train(cfg, f"{args.out}/{crop}x{batch}", progress=False, overwrite=True)
    finally:
        loop.run_validation = run_validation
    return {"crop": crop, "batch": batch, "steps": steps, "seconds": time.monotonic() - began,
            "curve": curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("set")
    ap.add_argument("--val", required=True, help="comma-separated pair names held out")
    ap.add_argument("--init", default="realsr-df2k")
    ap.add_argument("--sizes", default="192x4,128x4,96x4", help="HR crop x batch, first = baseline")
    ap.add_argument("--steps", type=int, default=200, help="steps of the first size")
    ap.add_argument("--out", default="bench-steps-run")
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    pixels = sizes[0][0] ** 2 * sizes[0][1] * args.steps
    rows = [run_size(args, c, b, 4 * round(pixels / (4 * c * c * b))) for c, b in sizes]
    base = rows[0]
    print(f"\n{args.init} on {args.set}: cosine 2e-4, warmed-up EMA 0.99, "
          f"{pixels / 1e6:.1f} M HR pixels per run")
    print("| crop x batch | steps | seconds | val PSNR at 1/4, 1/2, 3/4, end (dB) | end - "
          f"{base['crop']}x{base['batch']} | time ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        psnrs = ", ".join(f"{p:.3f}" for _, p in r["curve"][-4:])
        print(f"| {r['crop']}x{r['batch']} | {r['steps']} | {r['seconds']:.0f} | {psnrs} | "
              f"{r['curve'][-1][1] - base['curve'][-1][1]:+.3f} | "
              f"{r['seconds'] / base['seconds']:.2f} |")
        config = {"set": Path(args.set).name, "crop_x_batch": f"{r['crop']}x{r['batch']}"}
        records.append("steps", config, {
            "steps": r["steps"], "seconds": round(r["seconds"]),
            "val_psnr_quarters": [round(p, 3) for _, p in r["curve"][-4:]],
            "end_vs_first": round(r["curve"][-1][1] - base["curve"][-1][1], 3),
            "time_ratio": round(r["seconds"] / base["seconds"], 2)}, note=f"{args.init}, cosine 2e-4")


if __name__ == "__main__":
    main()
