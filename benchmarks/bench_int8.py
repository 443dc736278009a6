"""int8 against bf16 and fp32 through OpenVINO: speed of ``upres upscale`` on a 640x480 photo
(the whole process, the conversion and the quantization cached by a first run, each timed run
alone), and PSNR on a set's test pairs (RGB, border 4), int8 calibrated on the test LR images
as ``upres predict`` does, with and without accuracy control on pairs.

    python benchmarks/bench_int8.py ../shared/data/minicomp --models realesrgan-x4plus,rfdn-x4

Figures per model and precision: seconds for the photo (median of 3 runs), its ratio to bf16 in
the same run, test PSNR and its difference from fp32."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

import records
from upres.inference.int8 import cpu_int8_flags
from upres.inference.upscaler import Upscaler
from upres.io import images
from upres.scoring import metrics

UPRES = [sys.executable, "-m", "upres.cli"]
RUNS = 3


def photo(folder: Path) -> Path:
    """scikit-image's astronaut at 640x480 (what a user's photo might be)."""
    from skimage import data

    path = folder / "photo.png"
    images.write_image(path, cv2.resize(data.astronaut(), (640, 480), interpolation=cv2.INTER_AREA))
    return path


def process_seconds(model: str, image: Path, dtype: str, calibrate: Path) -> float:
    """Median wall time of ``upres upscale`` on one image, after a first run that fills the
    user's cache (where the published models are installed)."""
    env = dict(os.environ)
    out = image.parent / f"out-{dtype}.png"
    args = [*UPRES, "upscale", str(image), "-o", str(out), "--model", model, "--dtype", dtype,
            "--overwrite", "--quiet", "--backend", "openvino", "--calibrate", str(calibrate)]
    subprocess.run(args, check=True, env=env)
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(args, check=True, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_psnr(model: str, data: Path, dtype: str, cache: Path, pairs: tuple = ()) -> float:
    lr_files = images.list_images(data / "test" / "lr")
    up = Upscaler(model, backend="openvino", dtype=dtype, tile=0, convert_cache=cache,
                  calibrate=tuple(lr_files), calibrate_pairs=pairs)
    return float(np.mean([metrics.psnr(up.upscale_array(images.read_image(p)),
                                       images.read_image(data / "test" / "hr" / p.name), 4)
                          for p in lr_files]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", type=Path)
    parser.add_argument("--models", default="realesrgan-x4plus,rfdn-x4")
    parser.add_argument("--pairs", type=int, default=6, help="train pairs for accuracy control")
    parser.add_argument("--ac-models", default="rfdn-x4",
                        help="models also quantized with accuracy control (x4plus's takes minutes)")
    args = parser.parse_args()
    print(f"int8 dot products on this CPU: {', '.join(cpu_int8_flags()) or 'none'}")
    train = sorted(images.list_images(args.set / "train" / "lr"))[:args.pairs]
    pairs = tuple((p, args.set / "train" / "hr" / p.name) for p in train)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image, cache = photo(tmp), tmp / "cache"
        for model in args.models.split(","):
            seconds = {d: process_seconds(model, image, d, args.set / "test" / "lr")
                       for d in ("fp32", "bf16", "int8")}
            psnr = {d: test_psnr(model, args.set, d, cache / "upres" / "openvino")
                    for d in ("fp32", "bf16", "int8")}
            if model in args.ac_models.split(","):
                psnr["int8-ac"] = test_psnr(model, args.set, "int8", cache / "upres" / "openvino", pairs)
            for dtype, value in psnr.items():  # (printed as measured: run it with python -u)
                secs = seconds.get(dtype)  # int8-ac's process is not timed (its IR is another)
                figures = {"test_psnr": round(value, 3), "vs_fp32_db": round(value - psnr["fp32"], 3)}
                if secs is not None:
                    figures = {"photo_seconds": round(secs, 2), "vs_bf16": round(seconds["bf16"] / secs, 2),
                               **figures}
                timing = (f"{secs:.2f} s for the 640x480 photo ({figures['vs_bf16']:.2f}x bf16's speed), "
                          if secs is not None else "")
                print(f"{model} {dtype}: {timing}test PSNR {value:.3f} dB "
                      f"({figures['vs_fp32_db']:+.3f} vs fp32)")
                records.append("int8", {"model": model, "precision": dtype, "set": args.set.name}, figures)


if __name__ == "__main__":
    main()
