"""Fingerprint speed at competition size: N pairs of 512x512 LR / 2048x2048 HR (scikit-image
photos resized to 2048, degraded by the 8 default recipes in turn), timed cold (PNG decode into
the cache + fit + grouping + classifier) and warm (the cache already built, as after training
or a second run); the baseline is decoding every pair once, measured in the same run.
With --pairs 1640 it is the competition's size (about 30 GB of disk for the PNGs and the
decoded cache).

    python benchmarks/bench_fingerprint.py [--pairs 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
from skimage import data

import records
from upres.degradation import recipes
from upres.degradation.folders import fingerprint_data
from upres.io import images
from upres.io.pairs import find_pairs

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def build(root: Path, n: int) -> None:
    names = recipes.DEFAULT_RECIPES
    labels = {f"{i:04d}": names[i % len(names)] for i in range(n)}
    (root / "recipes.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "recipes.json").write_text(json.dumps({"train": labels}))
    for i in range(n):
        img = getattr(data, PHOTOS[i % len(PHOTOS)])()[..., :3]
        hr = cv2.resize(img, (2048, 2048), interpolation=cv2.INTER_CUBIC)
        hr = cv2.flip(hr, i % 3 - 1) if i % 4 else hr  # vary the content a little
        recipe = recipes.parse_recipe(names[i % len(names)])
        images.write_image(root / "train" / "hr" / f"{i:04d}.png", hr)
        images.write_image(root / "train" / "lr" / f"{i:04d}.png", recipes.degrade(hr, recipe, 4, i))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--dir", help="build the pairs here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        build(root, args.pairs)
        pairs, _ = find_pairs(root / "train" / "lr", root / "train" / "hr")
        t = time.perf_counter()
        for pair in pairs:  # the baseline: decoding every pair once, as any reader must
            images.read_image(pair.lr), images.read_image(pair.hr)
        decode = time.perf_counter() - t
        t = time.perf_counter()
        fingerprint_data(root, root / "fp", cache_dir=root / "cache", progress=False)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        fp = fingerprint_data(root, root / "fp", cache_dir=root / "cache", progress=False)
        warm = time.perf_counter() - t
    n = args.pairs
    print(f"{n} pairs 512x512 -> 2048x2048, {len(fp.groups)} groups, purity {fp.purity():.1%}, "
          f"classifier {fp.classifier['accuracy']:.1%} vs {fp.classifier['chance']:.1%} chance")
    print(f"{'':22s} {'total s':>8s} {'per pair ms':>12s}")
    for label, sec in (("decode (baseline)", decode), ("fingerprint, cold", cold),
                       ("fingerprint, warm", warm)):
        print(f"{label:22s} {sec:8.1f} {1000 * sec / n:12.1f}")
    print(f"cold / decode: {cold / decode:.2f}x, warm / decode: {warm / decode:.2f}x")
    records.append("fingerprint", {"pairs": n}, {
        "decode_s": round(decode, 1), "cold_s": round(cold, 1), "warm_s": round(warm, 1),
        "groups": len(fp.groups), "purity": round(100 * fp.purity(), 1),
        "cv_accuracy": round(100 * fp.classifier["accuracy"], 1),
        "cv_chance": round(100 * fp.classifier["chance"], 1)})


if __name__ == "__main__":
    main()
