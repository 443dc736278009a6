"""A self-contained HTML report: per-image PSNR/SSIM of bicubic and each prediction folder, and
side-by-side zoomed crops (bicubic | predictions | ground truth) as PNG files beside it. It opens
offline from disk; its numbers come from the same scoring and formatting as the eval CSV."""

from __future__ import annotations

import base64
import html
import os
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


def _b64(img: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(images.encode_image(img, ".png")).decode()


def _zoom(img: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
    return np.repeat(np.repeat(img[y:y + size, x:x + size], ZOOM, 0), ZOOM, 1)


def _figures(gt_dir: Path, lr_dir: Path, preds: dict[str, Path], stems: list[str],
             out_dir: Path) -> list[dict]:
    """Per image, at the ground truth's busiest window: the zoomed strip LR (nearest) | bicubic |
    predictions | ground truth, and the bicubic and first prediction crops for the before/after
    slider; links to the full-size files."""
    figures = []
    gt_files = {p.stem: p for p in images.list_images(gt_dir)}
    lr_files = {p.stem: p for p in images.list_images(lr_dir)}
    pred_files = {name: {p.stem: p for p in images.list_images(folder)}
                  for name, folder in preds.items()}
    for stem in stems:
        gt = images.read_image(gt_files[stem])
        lr = images.read_image(lr_files[stem])
        size = min(CROP, gt.shape[0], gt.shape[1])
        scale = max(gt.shape[0] // lr.shape[0], 1)
        y, x = busiest_window(gt, size)
        y, x = y // scale * scale, x // scale * scale
        bicubic = bicubic_for(lr, gt, lr_files[stem], gt_files[stem])
        predictions = [images.read_image(pred_files[name][stem]) for name in preds]
        lr_big = np.repeat(np.repeat(lr, scale, 0), scale, 1)
        crops = [_zoom(p, y, x, size) for p in (lr_big, bicubic, *predictions, gt)]
        links = {name: os.path.relpath(pred_files[name][stem], out_dir) for name in preds}
        links["ground truth"] = os.path.relpath(gt_files[stem], out_dir)
        figures.append({"stem": stem, "strip": _b64(_strip(crops)), "before": _b64(crops[1]),
                        "after": _b64(crops[2]), "after_name": next(iter(preds)), "y": y, "x": x,
                        "size": size, "links": links})
    return figures


def build_report(gt_dir: str | Path, lr_dir: str | Path, preds: dict[str, Path],
                 out_dir: str | Path, crop_border: int = 4, y_channel: bool = False) -> Path:
    """Write ``index.html`` (self-contained: the crops are inline) and ``scores_<name>.csv`` per
    prediction folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores: dict[str, list[ImageScore]] = {}
    for name, folder in preds.items():
        scores[name] = evaluate_folders(folder, gt_dir, lr_dir, crop_border, y_channel)
        atomic_write_bytes(out_dir / f"scores_{safe_name(name)}.csv", scores_csv(scores[name]).encode())
    rows = _score_rows(scores)
    stems = [s.name for s in next(iter(scores.values()))]
    figures = _figures(Path(gt_dir), Path(lr_dir), preds, stems, out_dir)
    page = _page(list(preds), rows, figures, crop_border, y_channel, gt_dir, lr_dir)
    index = out_dir / "index.html"
    atomic_write_bytes(index, page.encode())
    return index


STYLE = """body{font-family:system-ui,sans-serif;margin:0 auto;padding:1em;max-width:1100px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child{text-align:left}tr.mean{font-weight:bold}td.best{background:#dff0d8;font-weight:bold}
.wrap{overflow-x:auto}img{image-rendering:pixelated;max-width:100%}figure{margin:1.2em 0}
.ba{position:relative;display:inline-block;max-width:100%}.ba img{display:block}
.ba .top{position:absolute;top:0;left:0;overflow:hidden;width:50%;height:100%}
.ba .top img{max-width:none}.ba input{width:100%}"""
SLIDER = """<script>function slide(el){const box=el.parentNode;box.querySelector('.top').style.width=
el.value+'%';box.querySelector('.top img').style.width=box.querySelector('img').offsetWidth+'px';}
window.addEventListener('load',()=>document.querySelectorAll('.ba input').forEach(slide));
window.addEventListener('resize',()=>document.querySelectorAll('.ba input').forEach(slide));
</script>"""


def _row_cells(cells: list[str]) -> str:
    """The row's cells, the best PSNR (of bicubic and the predictions) marked."""
    psnrs = [float(c) if c else -1.0 for c in cells[0::2]]
    best = int(np.argmax(psnrs))
    return "".join(f"<td{' class=best' if i == 2 * best else ''}>{c}</td>" for i, c in enumerate(cells))


def _figure_html(f: dict, labels: str) -> str:
    links = " | ".join(f"<a href='{html.escape(rel)}'>{html.escape(name)}</a>"
                       for name, rel in f["links"].items())
    stem, size = html.escape(f["stem"]), f["size"]
    return (f"<figure><img src='{f['strip']}' alt='{stem}'><figcaption>{stem}: {size}x{size} window "
            f"at (x={f['x']}, y={f['y']}), zoom x{ZOOM}: {labels}. Full size: {links}</figcaption>"
            f"<div class=ba><img src='{f['before']}' alt='bicubic'><div class=top><img "
            f"src='{f['after']}' alt='{html.escape(f['after_name'])}'></div><input type=range "
            f"min=0 max=100 value=50 oninput='slide(this)' aria-label='before/after'></div>"
            f"<figcaption>before/after: bicubic (right) | {html.escape(f['after_name'])} (left); "
            "drag the slider</figcaption></figure>")


def _page(names: list[str], rows, figures, crop_border: int, y_channel: bool, gt_dir, lr_dir) -> str:
    unit = "PSNR-Y (dB)" if y_channel else "PSNR (dB)"
    head = "".join(f"<th colspan=2>{html.escape(n)}</th>" for n in ["bicubic", *names])
    sub = f"<th>{unit}</th><th>SSIM</th>" * (len(names) + 1)
    body = "\n".join(f"<tr{' class=mean' if n == 'mean' else ''}><td>{html.escape(n)}</td>"
                     + _row_cells(cells) + "</tr>" for n, cells in rows)
    labels = " | ".join(html.escape(n) for n in ["LR (nearest)", "bicubic", *names, "ground truth"])
    figs = "\n".join(_figure_html(f, labels) for f in figures)
    metric = "PSNR-Y / SSIM-Y" if y_channel else "PSNR / SSIM (RGB)"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>upres report</title><style>{STYLE}</style>{SLIDER}</head><body>
<h1>upres report</h1>
<p>{metric} in dB / unitless, crop border {crop_border} px, on uint8 images (BasicSR definitions);
the best PSNR of each row is marked. Ground truth: {html.escape(str(gt_dir))}; LR:
{html.escape(str(lr_dir))}.</p>
<div class=wrap><table id="scores"><tr><th rowspan=2>image</th>{head}</tr><tr>{sub}</tr>
{body}
</table></div>
<h2>Crops</h2>
{figs}
</body></html>
"""


def before_after_page(lr_path: str | Path, sr_path: str | Path, out: str | Path,
                      model: str = "upres") -> Path:
    """A one-image page without ground truth (the demo's): the busiest window of the result,
    bicubic against the model under a slider, and links to the full-size files."""
    from upres.scoring.metrics import bicubic_upscale

    out = Path(out)
    lr, sr = images.read_image(lr_path), images.read_image(sr_path)
    scale = max(sr.shape[0] // lr.shape[0], 1)
    size = min(2 * CROP, sr.shape[0], sr.shape[1])
    y, x = busiest_window(sr, size)
    bicubic = bicubic_upscale(lr, scale)[:sr.shape[0], :sr.shape[1]]
    before, after = (_b64(_zoom(img, y, x, size)) for img in (bicubic, sr))
    figure = _figure_html({"stem": Path(sr_path).name, "strip": after, "before": before,
                           "after": after, "after_name": model, "x": x, "y": y, "size": size,
                           "links": {"input": os.path.relpath(lr_path, out.parent),
                                     model: os.path.relpath(sr_path, out.parent)}}, model)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width,initial-scale=1'><title>upres: before/after</title>"
            f"<style>{STYLE}</style>{SLIDER}</head><body><h1>{html.escape(Path(lr_path).name)} x"
            f"{scale}</h1><p>{lr.shape[1]}x{lr.shape[0]} in, {sr.shape[1]}x{sr.shape[0]} out by "
            f"{html.escape(model)}. Drag the slider to compare with bicubic upsampling.</p>"
            f"{figure}</body></html>")
    atomic_write_bytes(out, page.encode())
    return out
