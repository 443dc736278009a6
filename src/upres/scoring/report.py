"""A self-contained HTML report: per-image PSNR/SSIM of bicubic and each prediction folder, and
side-by-side zoomed crops (bicubic | predictions | ground truth) as PNG files beside it. It opens
offline from disk; its numbers come from the same scoring and formatting as the eval CSV."""

from __future__ import annotations

import html
import re
from pathlib import Path

import cv2
import numpy as np

from upres.io import images
from upres.io.files import atomic_write_bytes
from upres.scoring.evaluate import ImageScore, bicubic_for, evaluate_folders, mean_score, scores_csv
from upres.scoring.metrics import format_score as fmt

CROP = 96  # HR pixels of the zoomed window
ZOOM = 2


def safe_name(name: str) -> str:
    """A label usable as a file name (model labels may contain '/')."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def busiest_window(gt: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left of the ``size`` window with the most gradient energy (where methods differ)."""
    gray = gt if gt.ndim == 2 else cv2.cvtColor(gt[..., :3], cv2.COLOR_RGB2GRAY)
    g = gray.astype(np.float32)
    energy = np.abs(cv2.Sobel(g, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(g, cv2.CV_32F, 0, 1))
    box = cv2.boxFilter(energy, -1, (size, size), normalize=False, anchor=(0, 0),
                        borderType=cv2.BORDER_CONSTANT)
    h, w = gray.shape
    valid = box[: h - size + 1, : w - size + 1]
    y, x = np.unravel_index(np.argmax(valid), valid.shape)
    return int(y), int(x)


def _strip(panels: list[np.ndarray]) -> np.ndarray:
    gap = np.full((panels[0].shape[0], 4) + panels[0].shape[2:], 255, panels[0].dtype)
    out = [panels[0]]
    for p in panels[1:]:
        out += [gap, p]
    return np.concatenate(out, axis=1)


def _score_rows(scores: dict[str, list[ImageScore]]) -> list[tuple[str, list[str]]]:
    """Table rows: per image, then the mean; bicubic first, then each prediction folder."""
    names = list(scores)
    first = scores[names[0]]
    rows = []
    for i, base in enumerate(first):
        cells = [fmt("psnr", base.bicubic_psnr), fmt("ssim", base.bicubic_ssim)]
        for name in names:
            cells += [fmt("psnr", scores[name][i].psnr), fmt("ssim", scores[name][i].ssim)]
        rows.append((base.name, cells))
    means = {name: mean_score(s) for name, s in scores.items()}
    mean_cells = [fmt("psnr", means[names[0]].bicubic_psnr), fmt("ssim", means[names[0]].bicubic_ssim)]
    for name in names:
        mean_cells += [fmt("psnr", means[name].psnr), fmt("ssim", means[name].ssim)]
    rows.append(("mean", mean_cells))
    return rows


def _write_crops(gt_dir: Path, lr_dir: Path, preds: dict[str, Path], stems: list[str],
                 out_dir: Path) -> list[tuple[str, str, int, int, int]]:
    """A zoomed strip bicubic | predictions | ground truth per image, at its busiest window."""
    figures = []
    gt_files = {p.stem: p for p in images.list_images(gt_dir)}
    lr_files = {p.stem: p for p in images.list_images(lr_dir)}
    pred_files = {name: {p.stem: p for p in images.list_images(folder)}
                  for name, folder in preds.items()}
    for stem in stems:
        gt = images.read_image(gt_files[stem])
        lr = images.read_image(lr_files[stem])
        size = min(CROP, gt.shape[0], gt.shape[1])
        y, x = busiest_window(gt, size)
        panels = [bicubic_for(lr, gt, lr_files[stem], gt_files[stem])]
        panels += [images.read_image(pred_files[name][stem]) for name in preds]
        panels.append(gt)
        crops = [np.repeat(np.repeat(p[y:y + size, x:x + size], ZOOM, 0), ZOOM, 1) for p in panels]
        rel = f"crops/{stem}.png"
        images.write_image(out_dir / rel, _strip(crops))
        figures.append((stem, rel, y, x, size))
    return figures


def build_report(gt_dir: str | Path, lr_dir: str | Path, preds: dict[str, Path],
                 out_dir: str | Path, crop_border: int = 4, y_channel: bool = False) -> Path:
    """Write ``index.html``, ``scores_<name>.csv`` per prediction folder and ``crops/*.png``."""
    out_dir = Path(out_dir)
    (out_dir / "crops").mkdir(parents=True, exist_ok=True)
    scores: dict[str, list[ImageScore]] = {}
    for name, folder in preds.items():
        scores[name] = evaluate_folders(folder, gt_dir, lr_dir, crop_border, y_channel)
        atomic_write_bytes(out_dir / f"scores_{safe_name(name)}.csv", scores_csv(scores[name]).encode())
    rows = _score_rows(scores)
    stems = [s.name for s in next(iter(scores.values()))]
    figures = _write_crops(Path(gt_dir), Path(lr_dir), preds, stems, out_dir)
    page = _page(list(preds), rows, figures, crop_border, y_channel, gt_dir, lr_dir)
    index = out_dir / "index.html"
    atomic_write_bytes(index, page.encode())
    return index


def _page(names: list[str], rows, figures, crop_border: int, y_channel: bool, gt_dir, lr_dir) -> str:
    head = "".join(f"<th colspan=2>{html.escape(n)}</th>" for n in ["bicubic", *names])
    sub = "<th>PSNR</th><th>SSIM</th>" * (len(names) + 1)
    body = "\n".join(
        f"<tr{' class=mean' if n == 'mean' else ''}><td>{html.escape(n)}</td>"
        + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for n, cells in rows)
    labels = " | ".join(html.escape(n) for n in ["bicubic", *names, "ground truth"])
    figs = "\n".join(
        f"<figure><img src='{rel}' alt='{html.escape(n)}'><figcaption>{html.escape(n)}: "
        f"{size}x{size} window at (x={x}, y={y}), zoom x{ZOOM}: {labels}</figcaption></figure>"
        for n, rel, y, x, size in figures)
    metric = "PSNR-Y / SSIM-Y" if y_channel else "PSNR / SSIM (RGB)"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>upres report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}tr.mean{{font-weight:bold}}
img{{image-rendering:pixelated;max-width:100%}}figure{{margin:1em 0}}</style></head><body>
<h1>upres report</h1>
<p>{metric}, crop border {crop_border}, on uint8 images (BasicSR definitions). Ground truth:
{html.escape(str(gt_dir))}; LR: {html.escape(str(lr_dir))}.</p>
<table id="scores"><tr><th rowspan=2>image</th>{head}</tr><tr>{sub}</tr>
{body}
</table>
<h2>Crops</h2>
{figs}
</body></html>
"""
