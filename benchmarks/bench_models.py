"""Models as published, no training, on a competition-style set's test pairs: test PSNR (RGB,
border 4, as ``upres eval``) beside bicubic's on the same images, and seconds per output
megapixel on this CPU (the default backend and precision, as ``upres predict`` runs them). The
rows of the README's "Which model" table.

    python benchmarks/bench_models.py ../shared/data/minicomp --models craft-x4,imdn-x4,realesrgan-x4plus

SET holds test/lr and test/hr. Published names must be installed (``upres models pull NAME`` or
``upres models add FILE``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import records
from upres.inference.upscaler import Upscaler
from upres.io import images
from upres.io.published import PUBLISHED
from upres.scoring import metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", type=Path)
    parser.add_argument("--models", required=True, help="comma-separated names or weights files")
    args = parser.parse_args()
    pairs = [(p, args.set / "test" / "hr" / p.name) for p in images.list_images(args.set / "test" / "lr")]
    for name in args.models.split(","):
        up = Upscaler(name)
        ours, bicubic, seconds, pixels = [], [], 0.0, 0
        for lr_path, hr_path in pairs:
            lr, hr = images.read_image(lr_path), images.read_image(hr_path)
            start = time.perf_counter()
            sr = up.upscale_array(lr)
            seconds += time.perf_counter() - start
            pixels += sr.shape[0] * sr.shape[1]
            ours.append(metrics.psnr(sr, hr, 4))
            bicubic.append(metrics.psnr(metrics.bicubic_upscale(lr, 4), hr, 4))
        psnr, base = float(np.mean(ours)), float(np.mean(bicubic))
        print(f"{name}: {psnr:.3f} dB (bicubic {base:.3f}, {psnr - base:+.3f}), "
              f"{seconds / (pixels / 1e6):.2f} s/MP; {up.notes[0]}")
        use = (f"PSNR, no training ({PUBLISHED[name].family})" if name in PUBLISHED
               else "as published")
        records.append("models-minicomp", {"model": f"{name} as published", "use": use}, {
            "test_psnr": round(psnr, 3), "vs_bicubic": round(psnr - base, 3),
            "seconds_per_mp": round(seconds / (pixels / 1e6), 2), "images": len(ours)},
            note=f"set {args.set.name}; {up.notes[0].split(':')[0]}")


if __name__ == "__main__":
    main()
