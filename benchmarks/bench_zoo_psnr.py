"""Each published model, loaded by its registry name, scored the way SR papers score: LR made
from the HR by bicubic x4 with antialiasing (MATLAB's imresize: Keys a = -0.5, in float, rounded
once), PSNR on the Y channel (BT.601) with 4 pixels cut from each edge; beside the figure its
authors published where the registry records one, and spandrel's own loading of the same file on
one image (families spandrel loads). Also seconds per output megapixel on this CPU (PyTorch fp32,
whole images), and bicubic's PSNR, measured in the same run.

    python benchmarks/bench_zoo_psnr.py --weights ../shared/weights --sets ../shared/data/benchmarks

--weights: a folder of published files (matched to the registry by sha256 and installed into a
temporary cache, so the user's cache is untouched); --sets: a folder holding Set5/ and Set14/."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import records
from upres.io import images
from upres.scoring import metrics


def matlab_bicubic_down(hr: np.ndarray, scale: int) -> np.ndarray:
    """HR (uint8 RGB, cropped to a multiple of the scale) down by ``scale`` as MATLAB's imresize
    does: bicubic with the kernel widened by the scale (antialiasing), in float, rounded once."""
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    channels = [np.asarray(Image.fromarray(hr[..., c].astype(np.float32), mode="F")
                           .resize((w, h), Image.Resampling.BICUBIC)) for c in range(3)]
    return np.clip(np.round(np.stack(channels, -1)), 0, 255).astype(np.uint8)


def score(up, folder: Path) -> dict:
    """Mean Y-channel PSNR (border 4) of the model and of bicubic over a set, and the model's
    seconds per output megapixel."""
    ours, bic, seconds, pixels = [], [], 0.0, 0
    for path in images.list_images(folder):
        hr = images.read_image(path)
        hr = images.gray_to_rgb(hr) if hr.ndim == 2 else hr[..., :3]
        hr = hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4]
        lr = matlab_bicubic_down(hr, 4)
        start = time.perf_counter()
        sr = up.upscale_array(lr)
        seconds += time.perf_counter() - start
        pixels += sr.shape[0] * sr.shape[1]
        ours.append(metrics.psnr(sr, hr, 4, y_channel=True))
        bic.append(metrics.psnr(metrics.bicubic_upscale(lr, 4), hr, 4, y_channel=True))
    return {"psnr_y": round(float(np.mean(ours)), 3), "bicubic_psnr_y": round(float(np.mean(bic)), 3),
            "seconds_per_mp": round(seconds / (pixels / 1e6), 2), "images": len(ours)}


def spandrel_difference(path: Path, up, probe: np.ndarray) -> float | None:
    """Largest difference (in 1/255) between upres's output and spandrel's own model of the file."""
    import torch
    from spandrel import ModelLoader
    from spandrel.__helpers.registry import UnsupportedModelError

    try:
        theirs = ModelLoader().load_from_file(str(path)).model.eval()
    except UnsupportedModelError:
        return None
    with torch.no_grad():
        x = torch.from_numpy(probe.astype(np.float32) / 255).permute(2, 0, 1)[None]
        out = theirs(x)[0].permute(1, 2, 0).numpy()
    ours = up.upscale_float(probe.astype(np.float32) / 255)  # (unclipped, as the network's)
    return round(float(np.abs(out - ours).max() * 255), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--sets", type=Path, required=True)
    args = parser.parse_args()
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="zoo-cache-")  # installs go here
    from upres.errors import WeightsError
    from upres.inference.upscaler import Upscaler
    from upres.io.published import PUBLISHED, add

    print("| model | family | set | PSNR-Y (dB) | published | difference | bicubic | s/MP "
          "| vs spandrel (1/255) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in sorted(args.weights.glob("*.pth")):
        try:
            name = add(path)
        except WeightsError as err:  # a file the registry does not know (yet)
            print(f"| {path.name} | - | - | not in the registry: {str(err)[:60]} |")
            continue
        entry = PUBLISHED[name]
        up = Upscaler(name, backend="torch", dtype="fp32", tile=0)
        probe = images.read_image(next(iter(images.list_images(args.sets / "Set5"))))[:48, :48, :3]
        versus = spandrel_difference(path, up, probe)
        for set_name in ("Set5", "Set14"):
            got = score(up, args.sets / set_name)
            paper = entry.published_psnr.get(set_name)
            diff = None if paper is None else round(got["psnr_y"] - paper, 3)
            print(f"| {name} | {entry.family} | {set_name} | {got['psnr_y']:.3f} | "
                  f"{'-' if paper is None else paper} | {'-' if diff is None else f'{diff:+.3f}'} | "
                  f"{got['bicubic_psnr_y']:.3f} | {got['seconds_per_mp']} | "
                  f"{'-' if versus is None else versus} |", flush=True)
            records.append("zoo-psnr", {"model": name, "set": set_name}, {
                **got, "published_psnr_y": paper, "difference": diff, "vs_spandrel_x255": versus},
                note=entry.published_source or "no published figure recorded for this file")


if __name__ == "__main__":
    main()
