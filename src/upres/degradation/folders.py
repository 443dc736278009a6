"""Fingerprints of folders: a data folder's pairs fingerprinted into ``fingerprint.json`` and its
HTML page, and a folder of LR-only images labelled with a saved fingerprint's classifier."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from upres.degradation import recipes
from upres.degradation.fingerprint import Fingerprint, fingerprint
from upres.degradation.report import write_report
from upres.errors import DataError, listing
from upres.io import images
from upres.io.files import atomic_write_bytes, check_output_file, check_output_folder, staged_folder
from upres.io.pairs import find_pairs


def train_pairs(data: str | Path):
    """The pairs of a competition folder (``train/lr`` + ``train/hr``) or of a folder holding
    ``lr`` and ``hr`` directly, and the recorded recipes when the set has them."""
    data = Path(data)
    base, split = (data / "train", "train") if (data / "train").is_dir() else (data, None)
    pairs, problems = find_pairs(base / "lr", base / "hr")
    if problems:
        raise DataError(f"{len(problems)} problem(s) in {data}:" + listing(problems))
    root = data if split else data.parent
    return pairs, recipes.read_labels(root, split or data.name)


def fingerprint_data(data: str | Path, out_dir: str | Path, scale: int = 4,
                     cache_dir: str | Path | None = None, progress: bool = True,
                     overwrite: bool = False) -> Fingerprint:
    """Write ``out/fingerprint.json`` and ``out/fingerprint.html`` for a data folder, as one
    folder that appears complete (an existing one is replaced only with ``overwrite``)."""
    check_output_folder(out_dir, overwrite)
    pairs, labels = train_pairs(data)
    fp, cache = fingerprint(pairs, scale, cache_dir, labels, progress)
    fp.source = str(data)
    with staged_folder(out_dir, overwrite) as staging:
        fp.save(staging / "fingerprint.json")
        write_report(fp, staging / "fingerprint.html", cache.load, [p.name for p in pairs])
    return fp


@dataclass
class Label:
    path: Path
    group: int
    confidence: float
    probabilities: list[float]


def label_lr(fp_path: str | Path, lr_dir: str | Path, out: str | Path | None = None,
             overwrite: bool = False) -> list[Label]:
    """Each LR image's most likely group and its probability; written to ``out`` as JSON."""
    if out:
        check_output_file(out, overwrite)
    fp = Fingerprint.load(fp_path)
    files = images.list_images(lr_dir) if Path(lr_dir).is_dir() else []
    if not files:
        raise DataError(f"{lr_dir}: no images")
    labels = []
    for path in files:
        img = images.read_image(path)
        if img.ndim == 2:
            img = images.gray_to_rgb(img)
        try:
            group, p = fp.label(img[..., :3])
        except ValueError as err:
            raise DataError(f"{path}: {err}") from None
        labels.append(Label(path, group, float(p[group]), np.round(p, 4).tolist()))
    if out:
        table = {x.path.name: {"group": x.group, "confidence": x.confidence,
                               "probabilities": x.probabilities} for x in labels}
        atomic_write_bytes(out, json.dumps(table, indent=1).encode(), overwrite)
    return labels
