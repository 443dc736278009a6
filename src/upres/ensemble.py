"""Prediction for a test folder: one or several models on the ``upscale`` inference path, each
optionally self-ensembled, fused by soft voting, written as a new submission folder.

Soft-voting weights:
- ``psnr``: the recipe's rule, weights proportional to each model's validation PSNR,
  ``w_i = PSNR_i / sum_j PSNR_j``;
- ``inv-mse``: proportional to ``10 ** (PSNR_i / 10)``, i.e. ``1 / MSE_i`` (inverse variance);
- ``fit``: non-negative weights summing to 1 that minimise the squared error of the fused
  prediction over the validation set (the PSNR of the pooled MSE), by projected gradient;
- explicit ``w1,w2,...``: non-negative, normalised to sum to 1.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from upres import images, metrics
from upres.evaluate import EvalError, match_by_stem
from upres.fileio import atomic_path, atomic_write_bytes
from upres.inference import InferenceOptions, Upscaler


class PredictError(ValueError):
    """Prediction cannot run as asked; the message says why."""


# --------------------------------------------------------------------------- weights


def project_to_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {w >= 0, sum w = 1} (sort-based, exact)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1
    rho = np.nonzero(u * np.arange(1, len(v) + 1) > css)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1), 0)


def fit_weights(preds: list[np.ndarray], targets: list[np.ndarray], iterations: int = 5000) -> np.ndarray:
    """Simplex weights minimising sum over images of ||sum_i w_i P_i - T||^2.

    ``preds[k]`` holds model predictions for image k stacked as (models, ...); the problem is a
    small quadratic program solved by accelerated projected gradient on the Gram matrix."""
    n_models = preds[0].shape[0]
    gram = np.zeros((n_models, n_models))
    lin = np.zeros(n_models)
    for p, t in zip(preds, targets):
        flat = p.reshape(n_models, -1).astype(np.float64)
        gram += flat @ flat.T
        lin += flat @ t.reshape(-1).astype(np.float64)
    step = 1.0 / max(np.linalg.eigvalsh(gram).max(), 1e-12)
    w = np.full(n_models, 1.0 / n_models)
    y, t_k = w.copy(), 1.0
    for _ in range(iterations):
        w_next = project_to_simplex(y - step * (gram @ y - lin))
        t_next = (1 + np.sqrt(1 + 4 * t_k * t_k)) / 2
        y = w_next + (t_k - 1) / t_next * (w_next - w)
        w, t_k = w_next, t_next
    return w


def weights_from_psnr(psnrs: list[float], rule: str) -> np.ndarray:
    p = np.asarray(psnrs, dtype=np.float64)
    w = p if rule == "psnr" else 10 ** ((p - p.max()) / 10)
    if np.any(w <= 0):
        raise PredictError(f"cannot weight by PSNR: non-positive PSNR in {psnrs}")
    return w / w.sum()


def parse_weights(spec: str, n_models: int) -> np.ndarray | str:
    if spec in ("psnr", "inv-mse", "fit"):
        return spec
    try:
        w = np.array([float(x) for x in spec.split(",")])
    except ValueError:
        raise PredictError(f"--weights {spec!r}: expected psnr, inv-mse, fit or numbers like "
                           "0.6,0.4") from None
    if len(w) != n_models or np.any(w < 0) or w.sum() <= 0:
        raise PredictError(f"--weights {spec!r}: need {n_models} non-negative numbers with a positive sum")
    return w / w.sum()


# --------------------------------------------------------------------------- prediction


@dataclass
class PredictResult:
    output: Path
    files: list[Path]
    weights: list[float]
    val: dict = field(default_factory=dict)
    zip_path: Path | None = None


def _fuse(outputs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    fused = np.zeros_like(outputs[0], dtype=np.float32)
    for w, out in zip(weights, outputs):
        fused += np.float32(w) * out
    return fused


def _to_image(rgb_float: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Float RGB model output back to the input's mode (gray stays gray) and bit depth."""
    out = rgb_float
    if like.ndim == 2:
        out = out @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return images.from_float(out, like.dtype)


def _rgb_input(img: np.ndarray, path: Path) -> np.ndarray:
    f = images.to_float(img)
    if f.ndim == 2:
        return np.repeat(f[..., None], 3, axis=2)
    if f.shape[2] == 4:
        raise PredictError(f"{path}: images with alpha are not supported by predict; use upscale")
    return f


def model_names(models: list[str | Path]) -> list[str]:
    """Short unique labels: the file stem, with its folder where stems repeat (runs/a/best)."""
    paths = [Path(str(m)) for m in models]
    stems = [p.stem if p.suffix else str(p) for p in paths]
    return [f"{p.parent.name}/{s}" if stems.count(s) > 1 and p.suffix else s
            for p, s in zip(paths, stems)]


class Predictor:
    """Several models, one inference path each, fused by soft voting."""

    def __init__(self, models: list[str | Path], options: InferenceOptions | None = None,
                 names: list[str] | None = None) -> None:
        if not models:
            raise PredictError("at least one --model is needed")
        self.upscalers = [Upscaler(m, options) for m in models]
        scales = {u.scale for u in self.upscalers}
        if len(scales) != 1:
            raise PredictError(f"models have different scales {sorted(scales)}; an ensemble needs one")
        self.scale = scales.pop()
        self.names = names or model_names(models)

    def predict_float(self, rgb: np.ndarray) -> list[np.ndarray]:
        return [u.upscale_float(rgb) for u in self.upscalers]

    def validate(self, val_dir: Path, crop_border: int | None = None) -> dict:
        """Each model's predictions and PSNR on ``val_dir/lr`` vs ``val_dir/hr``."""
        border = self.scale if crop_border is None else crop_border
        files = match_by_stem({"lr": val_dir / "lr", "hr": val_dir / "hr"})
        preds, targets, truths, per_model = [], [], [], [[] for _ in self.upscalers]
        for f in files:
            lr, hr = images.read_image(f["lr"]), images.read_image(f["hr"])
            if lr.shape[0] * self.scale != hr.shape[0] or lr.shape[1] * self.scale != hr.shape[1]:
                raise EvalError(f"{f['hr']}: size is not {self.scale} x that of {f['lr']}")
            outs = self.predict_float(_rgb_input(lr, f["lr"]))
            for i, out in enumerate(outs):
                per_model[i].append(metrics.psnr(_to_image(out, hr), hr, border))
            preds.append(np.stack(outs))
            truths.append(hr)
            targets.append(images.to_float(hr) if hr.ndim == 3 else
                           np.repeat(images.to_float(hr)[..., None], 3, axis=2))
        return {"files": files, "preds": preds, "targets": targets, "hr": truths, "border": border,
                "psnr": [float(np.mean(p)) for p in per_model]}

    @staticmethod
    def ensemble_psnr(val: dict, weights: np.ndarray) -> float:
        scores = []
        for hr, p in zip(val["hr"], val["preds"]):
            scores.append(metrics.psnr(_to_image(_fuse(list(p), weights), hr), hr, val["border"]))
        return float(np.mean(scores))


def _val_report(predictor: Predictor, val: dict, weights: np.ndarray, val_dir: Path,
                report_dir: Path) -> Path:
    """Write each model's and the ensemble's validation predictions, then the HTML report."""
    from upres.report import build_report, safe_name

    names = [*predictor.names, "ensemble"] if len(predictor.names) > 1 else list(predictor.names)
    folders = {name: report_dir / "predictions" / safe_name(name) for name in names}
    for f, hr, p in zip(val["files"], val["hr"], val["preds"]):
        outs = list(p) + ([_fuse(list(p), weights)] if len(names) > len(predictor.names) else [])
        for name, out in zip(names, outs):
            images.write_image(folders[name] / f"{f['hr'].stem}.png", _to_image(out, hr))
    return build_report(val_dir / "hr", val_dir / "lr", folders, report_dir, val["border"])


def predict(models: list[str | Path], input_dir: str | Path, output_dir: str | Path,
            weights: str = "psnr", val_dir: str | Path | None = None, make_zip: bool = False,
            options: InferenceOptions | None = None, progress: bool = True,
            report_dir: str | Path | None = None) -> PredictResult:
    """Upscale every image of ``input_dir`` into the new folder ``output_dir`` (PNG, same stems).

    The folder is filled under a temporary name and renamed at the end, so it either holds the
    whole submission or does not exist."""
    from tqdm import tqdm

    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise PredictError(f"{output_dir}: output folder exists and is not empty; predict writes "
                           "a new folder")
    if not input_dir.is_dir():
        raise PredictError(f"{input_dir}: input folder does not exist")
    if report_dir is not None and val_dir is None:
        raise PredictError("--report needs --val DIR: the report scores predictions against ground truth")
    inputs = images.list_images(input_dir)
    if not inputs:
        raise PredictError(f"{input_dir}: no images")
    stems = [p.stem for p in inputs]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise PredictError(f"{input_dir}: several inputs share the names {dupes}; outputs would clash")
    predictor = Predictor(models, options)
    chosen = parse_weights(weights, len(models)) if len(models) > 1 else np.ones(1)
    val_report: dict = {}
    if val_dir is not None:
        val = predictor.validate(Path(val_dir))
        if isinstance(chosen, str):
            chosen = (fit_weights(val["preds"], val["targets"]) if chosen == "fit"
                      else weights_from_psnr(val["psnr"], chosen))
        val_report = {"models": dict(zip(predictor.names, val["psnr"])),
                      "ensemble": predictor.ensemble_psnr(val, chosen),
                      "crop_border": val["border"], "images": len(val["files"])}
        if report_dir is not None:
            _val_report(predictor, val, chosen, Path(val_dir), Path(report_dir))
    elif isinstance(chosen, str):
        raise PredictError(f"--weights {weights} needs --val DIR (a folder with lr/ and hr/) to "
                           "score the models; or give explicit weights like 0.5,0.5")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    written = []
    try:
        for src in tqdm(inputs, desc="predict", unit="img", disable=not progress):
            img = images.read_image(src)
            fused = _fuse(predictor.predict_float(_rgb_input(img, src)), chosen)
            dst = staging / f"{src.stem}.png"
            images.write_image(dst, _to_image(fused, img))
            written.append(dst.name)
        if output_dir.exists():
            output_dir.rmdir()  # empty, checked above
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    info = {"models": [str(m) for m in models], "weights": [float(w) for w in chosen],
            "weight_rule": weights if len(models) > 1 else "single model",
            "self_ensemble": (options or InferenceOptions()).self_ensemble,
            "validation_psnr": val_report}
    atomic_write_bytes(output_dir.parent / f"{output_dir.name}.ensemble.json",
                       (json.dumps(info, indent=2) + "\n").encode())
    zip_path = None
    if make_zip:
        zip_path = output_dir.parent / f"{output_dir.name}.zip"
        with atomic_path(zip_path) as tmp:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
                for name in sorted(written):
                    zf.write(output_dir / name, name)
    return PredictResult(output_dir, [output_dir / n for n in sorted(written)],
                         [float(w) for w in chosen], val_report, zip_path)
