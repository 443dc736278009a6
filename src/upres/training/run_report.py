"""A training run's page (``RUN/report.html``), rewritten after every validation: the loss and
validation curves (bicubic as a line), validation crops LR | bicubic | model | HR at each
validation, the time each phase took, and the config. One self-contained file; the crops are
also in TensorBoard (``val/...``)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from upres.io import images
from upres.io.files import atomic_write_bytes, read_jsonl
from upres.scoring.report import busiest_window

CROP = 64  # HR pixels of the window shown
ZOOM = 2
SHOWN = 8  # validations shown with crops (the first, the last and evenly between)
STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1em;max-width:1000px;color:#222}
h2{font-size:1.15em;border-bottom:2px solid #ddd;margin-top:1.5em}
table{border-collapse:collapse;font-size:.92em}td,th{border-bottom:1px solid #ddd;padding:3px 8px}
img{max-width:100%;height:auto;image-rendering:pixelated}pre{background:#f5f5f5;padding:.6em;
overflow-x:auto;font-size:.85em}.wrap{overflow-x:auto}figure{margin:.6em 0}
.plots{display:flex;flex-wrap:wrap;gap:8px}.plots img{flex:1 1 400px;min-width:0;image-rendering:auto}
"""


def crop_strip(lr: np.ndarray, sr: np.ndarray, hr: np.ndarray, scale: int) -> np.ndarray:
    """LR (nearest) | bicubic | model | HR at the ground truth's busiest window, zoomed."""
    from upres.scoring.metrics import bicubic_upscale

    size = min(CROP, hr.shape[0], hr.shape[1])
    y, x = busiest_window(hr, size)
    y, x = y // scale * scale, x // scale * scale
    lr_up = np.repeat(np.repeat(lr, scale, 0), scale, 1)
    panels = [p[y:y + size, x:x + size] for p in (lr_up, bicubic_upscale(lr, scale), sr, hr)]
    gap = np.full((size, 3) + hr.shape[2:], 255, hr.dtype)
    strip = np.concatenate([q for p in panels for q in (p, gap)][:-1], axis=1)
    return np.repeat(np.repeat(strip, ZOOM, 0), ZOOM, 1)


def crops_folder(run_dir: Path) -> Path:
    return run_dir / "val_crops"


def _png(data: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(data).decode()}"


def _plot(records: list[dict]) -> str:
    """The loss and validation curves as two images side by side that stack on a phone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pictures = []
    for kind in ("loss", "val"):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        if kind == "loss":
            losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
            if losses:
                ax.plot(*zip(*losses))
                ax.set_yscale("log")
            ax.set_ylabel("training loss")
        else:
            vals = [(r["step"], r["val_psnr"]) for r in records if "val_psnr" in r]
            if vals:
                ax.plot(*zip(*vals), marker="o", label="model (EMA)")
                bicubic = next(r["bicubic_psnr"] for r in records if "bicubic_psnr" in r)
                ax.axhline(bicubic, color="k", ls="--", lw=1, label=f"bicubic {bicubic:.2f}")
                ax.legend(fontsize=8)
            ax.set_ylabel("validation PSNR (dB)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        pictures.append(f"<img alt='{kind} curve' src='{_png(buf.getvalue())}'>")
    return f"<div class=plots>{''.join(pictures)}</div>"


def _crops_html(run_dir: Path) -> str:
    files = sorted(crops_folder(run_dir).glob("step_*.png"))
    steps = sorted({f.name.split("_")[1] for f in files})
    if len(steps) > SHOWN:
        steps = [steps[round(i)] for i in np.linspace(0, len(steps) - 1, SHOWN)]
    parts = []
    for step in steps:
        figs = "".join(f"<figure><img alt='{html.escape(f.stem)}' src='{_png(f.read_bytes())}'>"
                       f"<figcaption>{html.escape(f.stem.split('_', 2)[2])}</figcaption></figure>"
                       for f in files if f.name.split("_")[1] == step)
        parts.append(f"<h3>step {int(step)}</h3>{figs}")
    return "".join(parts) or "<p>no validation yet</p>"


def write_run_report(run_dir: Path) -> Path:
    """``run_dir/report.html`` from the run's metrics, crops and config."""
    records = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    vals = [r for r in records if "val_psnr" in r]
    best = max(vals, key=lambda r: r["val_psnr"], default=None)
    head = (f"<p>best validation PSNR <b>{best['val_psnr']:.3f} dB</b> at step {best['step']} "
            f"(bicubic {best['bicubic_psnr']:.3f} dB, {best['val_psnr'] - best['bicubic_psnr']:+.3f})"
            "</p>" if best else "<p>no validation yet</p>")
    phases = next((r["phase_seconds"] for r in reversed(records) if "phase_seconds" in r), {})
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.1f} s</td></tr>" for k, v in phases.items())
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else ""
    body = (f"<h1>{html.escape(run_dir.name)}</h1>{head}<h2>Curves</h2>{_plot(records)}"
            f"<h2>Validation crops: LR | bicubic | model | HR (x{ZOOM})</h2>"
            f"<div class=wrap>{_crops_html(run_dir)}</div>"
            f"<h2>Time per phase</h2><table>{rows}</table>"
            f"<h2>Config</h2><pre>{html.escape(config)}</pre>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width,initial-scale=1'><title>{html.escape(run_dir.name)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>")
    atomic_write_bytes(run_dir / "report.html", page.encode())
    return run_dir / "report.html"


def save_crop(run_dir: Path, step: int, name: str, strip: np.ndarray) -> None:
    images.write_image(crops_folder(run_dir) / f"step_{step:09d}_{name}.png", strip)
