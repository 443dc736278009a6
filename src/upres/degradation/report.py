"""The fingerprint's HTML page: one section per group with its kernel as an image, size, residual
statistics, estimated post step, bicubic PSNR, true recipes (when known) and example crops."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from upres.degradation.fingerprint import Fingerprint
from upres.io import images
from upres.io.files import atomic_write_bytes


def _png(img: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(images.encode_image(img, ".png")).decode()


def kernel_image(kernel: np.ndarray, zoom: int = 12) -> np.ndarray:
    """Kernel taps as colours (red positive, blue negative, white zero), each tap zoom x zoom."""
    from matplotlib import colormaps

    peak = max(float(np.abs(kernel).max()), 1e-6)
    rgb = colormaps["RdBu_r"]((kernel / peak + 1) / 2)[..., :3]
    rgb = (rgb * 255).round().astype(np.uint8)
    return np.repeat(np.repeat(rgb, zoom, 0), zoom, 1)


def _crops(lr: np.ndarray, hr: np.ndarray, scale: int, side: int = 32) -> tuple[str, str]:
    h, w = lr.shape[:2]
    s = min(side, h, w)
    y, x = (h - s) // 2, (w - s) // 2
    lr_c = np.repeat(np.repeat(lr[y:y + s, x:x + s], scale, 0), scale, 1)
    hr_c = np.asarray(hr[y * scale:(y + s) * scale, x * scale:(x + s) * scale])
    return _png(np.ascontiguousarray(lr_c)), _png(np.ascontiguousarray(hr_c))


def recipe_guess(group) -> str:
    """What a group's recipe looks like: the recorded recipe when the set has them, else the
    kernel's width and the step after resampling."""
    if group.recipes:
        return max(group.recipes, key=group.recipes.get)
    width = "sharp" if group.spread < 2.2 else "medium" if group.spread < 3.0 else "soft"
    post = {"none": "", "noise": f" + noise {group.post.get('level')}",
            "jpeg": f" + JPEG q{group.post.get('level')}"}[group.post["kind"]]
    return f"{width} kernel (RMS radius {group.spread:.1f} HR px){post}"


def _overview(fp: Fingerprint) -> str:
    rows = "".join(
        f"<tr><td><a href='#group{g.id}'>{g.id}</a></td><td>{html.escape(recipe_guess(g))}</td>"
        f"<td>{g.count}</td><td><img alt='kernel {g.id}' src='{_png(kernel_image(fp.kernel(g.id), 3))}'>"
        f"</td><td>{g.bicubic_psnr:.2f}</td></tr>" for g in fp.groups)
    return ("<h2>Overview</h2><div class=wrap><table class=overview><tr><th>group</th><th>recipe "
            "(guess)</th><th>pairs</th><th>kernel</th><th>bicubic (dB)</th></tr>"
            f"{rows}</table></div>")


def write_report(fp: Fingerprint, path: str | Path, load=None, names: list[str] | None = None) -> None:
    """``load(i)`` returns pair ``i``'s (LR, HR) arrays; ``names`` their names (for examples)."""
    index = {n: i for i, n in enumerate(names or [])}
    purity = fp.purity()
    head = (f"<h1>Degradation fingerprint</h1><p>{len(fp.pairs)} pairs, x{fp.scale}, "
            f"{len(fp.groups)} groups, kernels {fp.kernel_size}x{fp.kernel_size} on the HR grid, "
            f"fitted in {fp.seconds:.1f} s.")
    if purity is not None:
        head += f" Purity against the recorded recipes: {purity:.1%}."
    if fp.classifier and fp.classifier.get("accuracy") is not None:
        c = fp.classifier
        head += (f" Blind LR classifier: {c['accuracy']:.1%} cross-validated accuracy "
                 f"({c['folds']} folds) beside {c['chance']:.1%} chance.")
    parts = [head + "</p>", _overview(fp)]
    for g in fp.groups:
        post = g.post["kind"] + (f" {g.post['level']}" if "level" in g.post else "")
        true = ", ".join(f"{k}: {v}" for k, v in g.recipes.items()) or "unknown"
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in (
            ("pairs", f"{g.count} ({g.count / len(fp.pairs):.0%})"),
            ("bicubic PSNR (central crops)", f"{g.bicubic_psnr:.2f} dB"),
            ("residual noise (8-bit luma)", f"{g.noise:.2f}"),
            ("JPEG blockiness", f"{g.blockiness:.2f}"), ("residual correlation", f"{g.correlation:.2f}"),
            ("JPEG grid evidence (0: none)", f"{g.grid:.2f}"),
            ("kernel RMS radius (HR px)", f"{g.spread:.2f}"),
            ("kernel offset y, x (HR px)", f"{g.offset[0]:+.2f}, {g.offset[1]:+.2f}"),
            ("estimated step after resampling", post), ("true recipes", true)))
        crops = ""
        if load is not None:
            for name in g.examples:
                if name in index:
                    lr_png, hr_png = _crops(*load(index[name]), fp.scale)
                    crops += (f"<figure><img src='{lr_png}'><img src='{hr_png}'>"
                              f"<figcaption>{html.escape(name)}: LR (nearest) | HR</figcaption></figure>")
        parts.append(f"<section id='group{g.id}'><h2>Group {g.id}</h2><div class='row'><figure><img src='"
                     f"{_png(kernel_image(fp.kernel(g.id)))}'><figcaption>mean kernel ({fp.kernel_size}x"
                     f"{fp.kernel_size} HR px; red +, blue -)</figcaption>"
                     f"</figure><table>{rows}</table></div><div class='row'>{crops}</div></section>")
    style = ("body{font-family:sans-serif;margin:0 auto;padding:1em;max-width:1100px}"
             "table{border-collapse:collapse}.wrap{overflow-x:auto}img{max-width:100%}"
             "th,td{text-align:left;padding:2px 10px;border-bottom:1px solid #ddd}.row{display:flex;"
             "gap:1.5em;flex-wrap:wrap;align-items:flex-start}img{image-rendering:pixelated}"
             "figure{margin:0}section{border-top:2px solid #444;margin-top:1.5em}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width,initial-scale=1'><title>upres fingerprint</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    atomic_write_bytes(path, page.encode())
