"""Score folders of predictions against ground truth with the metrics module (BasicSR
definitions), every number beside bicubic upsampling of the LR when the LR is given."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from upres.errors import EvalError, listing
from upres.io import images
from upres.io.files import atomic_write_bytes
from upres.scoring import metrics
from upres.scoring.metrics import bicubic_upscale, format_score


@dataclass
class ImageScore:
    name: str
    psnr: float
    ssim: float
    bicubic_psnr: float | None = None
    bicubic_ssim: float | None = None


def match_by_stem(folders: dict[str, Path]) -> list[dict[str, Path]]:
    """Files matched by stem across folders; any file without partners is an error."""
    found = {}
    for role, folder in folders.items():
        if not Path(folder).is_dir():
            raise EvalError(f"{folder}: folder does not exist")
        found[role] = {p.stem: p for p in images.list_images(folder)}
    stems = set().union(*(set(v) for v in found.values()))
    problems = []
    for stem in sorted(stems):
        missing = [role for role in found if stem not in found[role]]
        if missing:
            have = next(found[r][stem] for r in found if stem in found[r])
            problems.append(f"{have}: no counterpart in {', '.join(str(folders[r]) for r in missing)}")
    if problems:
        raise EvalError("file names do not match:" + listing(problems))
    if not stems:
        raise EvalError(f"{next(iter(folders.values()))}: no images")
    return [{role: found[role][s] for role in found} for s in sorted(stems)]


def score_image(pred: np.ndarray, gt: np.ndarray, crop_border: int, y_channel: bool,
                names: tuple[Path, Path]) -> tuple[float, float]:
    if pred.shape != gt.shape:
        raise EvalError(f"{names[0]}: size {pred.shape[1]}x{pred.shape[0]} differs from "
                        f"{names[1]} ({gt.shape[1]}x{gt.shape[0]})" if pred.shape[:2] != gt.shape[:2]
                        else f"{names[0]}: mode {pred.shape} differs from {names[1]} {gt.shape}")
    return (metrics.psnr(pred, gt, crop_border, y_channel),
            metrics.ssim(pred, gt, crop_border, y_channel))


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, lr_dir: str | Path | None = None,
                     crop_border: int = 4, y_channel: bool = False) -> list[ImageScore]:
    folders = {"pred": Path(pred_dir), "gt": Path(gt_dir)}
    if lr_dir is not None:
        folders["lr"] = Path(lr_dir)
    scores = []
    for files in match_by_stem(folders):
        pred, gt = images.read_image(files["pred"]), images.read_image(files["gt"])
        psnr, ssim = score_image(pred, gt, crop_border, y_channel, (files["pred"], files["gt"]))
        score = ImageScore(files["gt"].stem, psnr, ssim)
        if lr_dir is not None:
            lr = images.read_image(files["lr"])
            score.bicubic_psnr, score.bicubic_ssim = score_image(
                bicubic_for(lr, gt, files["lr"], files["gt"]), gt, crop_border, y_channel,
                (files["lr"], files["gt"]))
        scores.append(score)
    return scores


def bicubic_for(lr: np.ndarray, gt: np.ndarray, lr_path: Path, gt_path: Path) -> np.ndarray:
    """Bicubic upsampling of ``lr`` to ``gt``'s size; the scale must be a whole number."""
    scale = max(gt.shape[0] // lr.shape[0], 1)
    problem = images.scale_mismatch(lr, gt, scale, lr_path, gt_path)
    if problem:
        raise EvalError(problem)
    return bicubic_upscale(lr, scale)


def mean_score(scores: list[ImageScore]) -> ImageScore:
    def avg(key):
        values = [getattr(s, key) for s in scores]
        return None if values[0] is None else float(np.mean(values))
    return ImageScore("mean", avg("psnr"), avg("ssim"), avg("bicubic_psnr"), avg("bicubic_ssim"))


def scores_csv(scores: list[ImageScore]) -> str:
    """Per-image rows, then a ``mean`` row; bicubic columns only when they were computed."""
    with_bicubic = scores and scores[0].bicubic_psnr is not None
    columns = ["name", "psnr", "ssim"] + (["bicubic_psnr", "bicubic_ssim"] if with_bicubic else [])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for score in [*scores, mean_score(scores)]:
        row = asdict(score)
        writer.writerow({k: format_score(k, v) if isinstance(v, float) else v
                         for k, v in row.items()})
    return buf.getvalue()


def write_scores_csv(scores: list[ImageScore], path: str | Path, overwrite: bool = True) -> None:
    atomic_write_bytes(path, scores_csv(scores).encode(), overwrite)
