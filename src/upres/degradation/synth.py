"""Synthesized training pairs (``data.extra_hr``): extra HR images degraded like the training
LR, by a fingerprint group drawn in the groups' observed proportions (the draw depends on the file
name and the seed only), with the group's fitted kernel and estimated noise or JPEG step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from upres.degradation.fingerprint import Fingerprint, synthesize
from upres.degradation.recipes import crop_to_multiple, seed_of
from upres.errors import DataError, listing
from upres.io import images
from upres.io.files import atomic_write_bytes


def synthesize_pairs(extra_hr: str | Path, fp: Fingerprint, out_dir: str | Path,
                     seed: int = 0, min_side: int = 0) -> tuple[Path, Path]:
    """Write ``out/lr`` and ``out/hr`` (names prefixed ``synth-``) and ``out/synth.json`` (each
    file's group); returns the two folders."""
    extra_hr, out_dir = Path(extra_hr), Path(out_dir)
    sources = extra_hr_sources(extra_hr)
    proportions = fp.proportions()
    record, problems = {}, []
    for path in sources:
        img = images.read_image(path)
        if img.dtype != np.uint8:
            problems.append(f"{path}: {img.dtype.itemsize * 8}-bit samples; training expects 8-bit")
            continue
        hr = np.ascontiguousarray(crop_to_multiple(images.gray_to_rgb(img)[..., :3], fp.scale))
        if min(hr.shape[:2]) < max(min_side, 4 * fp.scale):
            problems.append(f"{path}: {img.shape[1]}x{img.shape[0]} is smaller than the crop {min_side}")
            continue
        rng = np.random.default_rng(seed_of(str(seed), path.name))
        group = int(rng.choice(len(proportions), p=proportions))
        lr = synthesize(hr, fp.kernel(group), fp.groups[group].post, fp.scale, int(rng.integers(2 ** 31)))
        name = f"synth-{path.stem}.png"
        images.write_image(out_dir / "hr" / name, hr)
        images.write_image(out_dir / "lr" / name, lr)
        record[name] = group
    if problems:
        raise DataError(f"{len(problems)} problem(s) in data.extra_hr:" + listing(problems))
    atomic_write_bytes(out_dir / "synth.json", json.dumps({"source": str(extra_hr), "groups": record},
                                                         indent=1).encode())
    return out_dir / "lr", out_dir / "hr"


def extra_hr_sources(extra_hr: str | Path) -> list[Path]:
    """The images of ``data.extra_hr``, checked before anything is fingerprinted or written."""
    extra_hr = Path(extra_hr)
    if not extra_hr.is_dir():
        raise DataError(f"data.extra_hr: {extra_hr}: no such folder")
    sources = images.list_images(extra_hr)
    if not sources:
        raise DataError(f"data.extra_hr: {extra_hr}: no images")
    return sources
