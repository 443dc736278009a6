"""The EMA a short fine-tune validates: BasicSR's plain decay against ``train.ema_warmup`` and
the raw weights, all three along one training trajectory (the EMA does not change the
training), validated every ``--every`` steps on the same pairs.

    python benchmarks/bench_ema.py SET --val NAME,NAME,... [--init realsr-df2k] [--steps 300]

SET: a folder with train/lr and train/hr; --val: the training pairs held out for validation."""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import records
from upres.training import loop
from upres.training.config import load_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("set")
    ap.add_argument("--val", required=True, help="comma-separated pair names held out")
    ap.add_argument("--init", default="realsr-df2k")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--ema", type=float, default=0.99)
    ap.add_argument("--out", default="bench-ema-run")
    args = ap.parse_args()
    cfg = load_config(None, [
        f"data.root={json.dumps(args.set)}", "data.workers=0", f"data.crop={args.crop}",
        f"train.batch_size={args.batch}", "train.lr=0.0002", "train.scheduler=cosine",
        "train.warmup=0.03", f"train.iterations={args.steps}", "train.precision=auto",
        f"train.ema={args.ema}", "train.ema_warmup=false", "train.seed=0", "train.channels_last=true",
        f"train.val_every={args.every}", f"train.checkpoint_every={10 ** 6}", "model.scale=4",
        "model.arch=RRDBNet", f"init.source={args.init}", "val.dtype=bf16",
        f"data.val_pairs={json.dumps(args.val.split(','))}"])
    warm_tc = cfg.train.model_copy(update={"ema_warmup": True})
    warm, rows = {}, []
    train_step, run_validation = loop.train_step, loop.run_validation

    def step_and_warm(state, *a, **k):
        if not warm:
            warm["ema"] = copy.deepcopy(state.ema)  # the start, before the first step
        outcome = train_step(state, *a, **k)
        if not outcome.skipped:
            loop.ema_update(warm["ema"], state.model, loop.ema_decay(warm_tc, state.step))
        return outcome

    def validate_all(state, data, cfg, run_dir, log):
        run_validation(state, data, cfg, run_dir, log)
        row = {"step": state.step, "plain": state.last_val["val_psnr"]}
        for name, model in (("warm", warm["ema"]), ("raw", state.model)):
            row[name] = loop.validate(model, data.cache, data.val_idx, cfg, state.device,
                                      data.bicubic_psnr)[0]["val_psnr"]
        rows.append(row)

    loop.train_step, loop.run_validation = step_and_warm, validate_all
    began = time.monotonic()
    loop.train(cfg, args.out, progress=False, overwrite=True)
    print(f"\n{args.init} on {args.set}: crop {args.crop} x batch {args.batch}, cosine 2e-4 over "
          f"{args.steps} steps, EMA {args.ema}, {time.monotonic() - began:.0f} s")
    print("| step | plain EMA (dB) | warmed-up EMA | raw weights | warm - plain |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['plain']:.3f} | {r['warm']:.3f} | {r['raw']:.3f} | "
              f"{r['warm'] - r['plain']:+.3f} |")
        records.append("ema", {"set": Path(args.set).name, "init": args.init, "step": r["step"]},
                       {k: round(r[k], 3) for k in ("plain", "warm", "raw")},
                       note=f"crop {args.crop} x batch {args.batch}, cosine 2e-4 over {args.steps} steps")


if __name__ == "__main__":
    main()
