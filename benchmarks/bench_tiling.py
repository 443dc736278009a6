"""Seams: how far tiled output is from whole-image output for realesrgan-x4plus on a real photo,
with two 512 tiles sharing exactly OVERLAP pixels, for each OVERLAP asked. fp32, so only the
tiling differs. The photo is scikit-image's astronaut (512x512) extended by its mirror image to
512 x (1024 - OVERLAP).

    python benchmarks/bench_tiling.py [--overlaps 128 192]     # ~3 minutes per overlap here
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from skimage import data

import records
from upres.inference.engine import tile_starts
from upres.inference.upscaler import Upscaler
from upres.io.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overlaps", type=int, nargs="+", default=[128, 192])
    parser.add_argument("--tile", type=int, default=512)
    args = parser.parse_args()
    model = load_model("realesrgan-x4plus")
    photo = data.astronaut()
    print(f"{'overlap':>8s} {'image':>9s} {'tiles at':>12s} {'max |diff| x255':>16s} "
          f"{'mean |diff| x255':>17s} {'whole s':>8s} {'tiled s':>8s}")
    for overlap in args.overlaps:
        width = 2 * args.tile - overlap
        img = np.concatenate([photo, photo[:, ::-1]], axis=1)[:, :width].astype(np.float32) / 255
        starts = tile_starts(width, args.tile, overlap)
        t0 = time.perf_counter()
        whole = Upscaler(model, tile=0, dtype="fp32", backend="torch").upscale_float(img)
        t1 = time.perf_counter()
        tiled = Upscaler(model, tile=args.tile, tile_overlap=overlap, dtype="fp32",
                         backend="torch").upscale_float(img)
        t2 = time.perf_counter()
        diff = np.abs(tiled - whole) * 255
        print(f"{overlap:8d} {img.shape[0]:4d}x{width:<4d} {str(starts):>12s} {diff.max():16.4f} "
              f"{diff.mean():17.6f} {t1 - t0:8.1f} {t2 - t1:8.1f}", flush=True)
        records.append("tiling", {"overlap": overlap}, {
            "image": f"{img.shape[0]}x{width}", "max_abs_diff_x255": round(float(diff.max()), 4),
            "mean_abs_diff_x255": round(float(diff.mean()), 6)})


if __name__ == "__main__":
    main()
