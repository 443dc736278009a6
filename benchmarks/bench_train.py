"""Training throughput: the full ``upres train`` loop (cached data, workers, crops, augmentation)
against a pure forward+backward+step loop of the same model on in-memory tensors, and against a
naive loader that decodes the PNGs for every sample. All in one run, on 2048x2048 HR PNGs made
from scikit-image photos.

    python benchmarks/bench_train.py [--pairs 8] [--steps 60] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data
from torch.utils.data import DataLoader, Dataset

import records
from upres.io import images
from upres.io.pairs import PairCache, find_pairs
from upres.models import build_model
from upres.training.config import load_config
from upres.training.loop import train

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def make_dataset(root: Path, pairs: int, hr_side: int) -> None:
    for i in range(pairs):
        img = getattr(data, PHOTOS[i % len(PHOTOS)])()[..., :3]
        hr = cv2.resize(img, (hr_side, hr_side), interpolation=cv2.INTER_CUBIC)
        hr = np.ascontiguousarray(np.roll(hr, i * 97, axis=1))
        images.write_image(root / "train/hr" / f"{i:04d}.png", hr)
        images.write_image(root / "train/lr" / f"{i:04d}.png",
                           cv2.resize(hr, (hr_side // 4, hr_side // 4), interpolation=cv2.INTER_AREA))


class DecodeEveryTime(Dataset):
    """What a loader without a cache does: decode both PNGs for every crop."""

    def __init__(self, pairs, crop):
        self.pairs, self.crop = pairs, crop

    def __len__(self):
        return 10 ** 9

    def __getitem__(self, n):
        pair = self.pairs[n % len(self.pairs)]
        lr, hr = images.read_image(pair.lr), images.read_image(pair.hr)
        rng = np.random.default_rng(n)
        lc = self.crop // 4
        y, x = rng.integers(0, lr.shape[0] - lc), rng.integers(0, lr.shape[1] - lc)
        lr_c = lr[y:y + lc, x:x + lc].transpose(2, 0, 1) / 255.0
        hr_c = hr[4 * y:4 * (y + lc), 4 * x:4 * (x + lc)].transpose(2, 0, 1) / 255.0
        return torch.from_numpy(lr_c.copy()).float(), torch.from_numpy(hr_c.copy()).float()


def step_loop(model, batches, steps: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    it = iter(batches)
    start = None
    for i in range(steps + 5):
        if i == 5:
            start = time.perf_counter()  # after warm-up
        lr, hr = next(it)
        loss = torch.nn.functional.mse_loss(model(lr), hr)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--hr-side", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    overrides = ["model.num_feat=32", "model.num_grow_ch=16", "model.num_block=2",
                 f"data.crop={args.crop}", f"data.workers={args.workers}",
                 f"train.batch_size={args.batch}", f"train.iterations={args.steps + 5}",
                 "train.log_every=5", "train.val_every=1000000", "train.checkpoint_every=1000000",
                 "data.val_split=1"]
    tmp = Path(tempfile.mkdtemp(prefix="upres-bench-"))
    try:
        make_dataset(tmp / "data", args.pairs, args.hr_side)
        pairs, _ = find_pairs(tmp / "data/train/lr", tmp / "data/train/hr")
        t0 = time.perf_counter()
        PairCache(pairs, 4, tmp / "cache", progress=False)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        PairCache(pairs, 4, tmp / "cache", progress=False)
        reuse = time.perf_counter() - t0
        cfg = load_config(None, overrides, data={"data": {"root": str(tmp / "data"),
                                                          "cache_dir": str(tmp / "cache")}})
        train(cfg, tmp / "run", progress=False)
        logged = [json.loads(x) for x in (tmp / "run/metrics.jsonl").read_text().splitlines()]
        rates = [r["it_per_s"] for r in logged if "it_per_s" in r][1:]  # drop the warm-up window
        loop_rate = float(np.median(rates))

        torch.manual_seed(0)
        model = build_model("RRDBNet", cfg.model.hparams()).train()
        lc = args.crop // 4
        lr = torch.rand(args.batch, 3, lc, lc)
        hr = torch.rand(args.batch, 3, args.crop, args.crop)
        pure = step_loop(model, iter(lambda: (lr, hr), None), args.steps)

        naive_loader = DataLoader(DecodeEveryTime(pairs, args.crop), batch_size=args.batch,
                                  num_workers=args.workers)
        naive = step_loop(build_model("RRDBNet", cfg.model.hparams()).train(), naive_loader,
                          max(10, args.steps // 4))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; RRDBNet 32/16/2 x4, "
          f"batch {args.batch}, HR crop {args.crop}, {args.pairs} pairs of "
          f"{args.hr_side}x{args.hr_side} PNG, {args.workers} workers")
    print(f"decode cache: first build {first:.2f} s, reuse {reuse:.3f} s")
    print(f"{'loop':52s} {'it/s':>7s} {'vs pure':>8s}")
    print(f"{'pure forward+backward+step on in-memory tensors':52s} {pure:7.2f} {1.0:7.2f}x")
    print(f"{'upres train (cache, crops, augmentation, EMA, logs)':52s} {loop_rate:7.2f} "
          f"{loop_rate / pure:7.2f}x")
    print(f"{'naive loader decoding PNGs per sample':52s} {naive:7.2f} {naive / pure:7.2f}x")
    note = (f"torch {torch.__version__}; RRDBNet 32/16/2, batch {args.batch}, crop {args.crop}, "
            f"{args.workers} workers")
    for loop, rate in (("forward+backward+step on in-memory tensors", pure),
                       ("upres train (cache, crops, augmentation, EMA, logs)", loop_rate),
                       ("a loader decoding the PNGs for every sample", naive)):
        records.append("train", {"loop": loop}, {"it_s": round(rate, 2), "vs_pure": round(rate / pure, 2)},
                       note=note)


if __name__ == "__main__":
    main()
