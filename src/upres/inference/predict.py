"""Prediction for a test folder: one or several models on the ``upscale`` inference path, each
optionally self-ensembled, fused by soft voting, written as a new submission folder.

Soft-voting coefficients (the CLI's ``--weights``):
- ``psnr``: the recipe's rule, proportional to each model's validation PSNR,
  ``w_i = PSNR_i / sum_j PSNR_j``;
- ``inv-mse``: proportional to ``10 ** (PSNR_i / 10)``, i.e. ``1 / MSE_i`` (inverse variance);
- ``fit``: non-negative coefficients summing to 1 that minimise the squared error of the fused
  prediction over the validation set (the PSNR of the pooled MSE), by projected gradient;
- explicit ``w1,w2,...``: non-negative, normalised to sum to 1.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from upres.errors import EvalError, PredictError, UpresError
from upres.inference.shard import Shard
from upres.inference.upscaler import InferenceOptions, Upscaler
from upres.io import images
from upres.io.files import atomic_path, atomic_write_bytes
from upres.scoring import metrics
from upres.scoring.evaluate import match_by_stem

RULES = ("psnr", "inv-mse", "fit")


# --------------------------------------------------------------------------- coefficients


def project_to_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto {w >= 0, sum w = 1} (sort-based, exact)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1
    rho = np.nonzero(u * np.arange(1, len(v) + 1) > css)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1), 0)


def fit_coefficients(preds: list[np.ndarray], targets: list[np.ndarray],
                     iterations: int = 5000) -> np.ndarray:
    """Simplex coefficients minimising sum over images of ||sum_i w_i P_i - T||^2.

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


def coefficients_from_psnr(psnrs: list[float], rule: str) -> np.ndarray:
    p = np.asarray(psnrs, dtype=np.float64)
    w = p if rule == "psnr" else 10 ** ((p - p.max()) / 10)
    if np.any(w <= 0):
        raise PredictError(f"cannot weight by PSNR: non-positive PSNR in {psnrs}")
    return w / w.sum()


def parse_coefficients(spec: str, n_models: int) -> np.ndarray | str:
    """A rule name, or explicit numbers normalised to sum to 1."""
    if spec in RULES:
        return spec
    try:
        w = np.array([float(x) for x in spec.split(",")])
    except ValueError:
        raise PredictError(f"--weights {spec!r}: expected psnr, inv-mse, fit or numbers like "
                           "0.6,0.4") from None
    if len(w) != n_models or np.any(w < 0) or w.sum() <= 0:
        raise PredictError(f"--weights {spec!r}: need {n_models} non-negative numbers with a positive sum")
    return w / w.sum()


# --------------------------------------------------------------------------- models


def fuse(outputs: list[np.ndarray], coefficients: np.ndarray) -> np.ndarray:
    fused = np.zeros_like(outputs[0], dtype=np.float32)
    for w, out in zip(coefficients, outputs):
        fused += np.float32(w) * out
    return fused


def to_image(rgb_float: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Float RGB model output back to the input's mode (gray stays gray) and bit depth."""
    return images.from_float(images.rgb_to_gray(rgb_float) if like.ndim == 2 else rgb_float,
                             like.dtype)


def rgb_input(img: np.ndarray, path: Path) -> np.ndarray:
    if img.ndim == 3 and img.shape[2] == 4:
        raise PredictError(f"{path}: images with alpha are not supported by predict; use upscale")
    return images.gray_to_rgb(images.to_float(img))


def model_names(models: list[str | Path]) -> list[str]:
    """Short unique labels: the file stem, with its folder where stems repeat (runs/a/best)."""
    paths = [Path(str(m)) for m in models]
    stems = [p.stem if p.suffix else str(p) for p in paths]
    return [f"{p.parent.name}/{s}" if stems.count(s) > 1 and p.suffix else s
            for p, s in zip(paths, stems)]


class Predictor:
    """Several models, one inference path each, fused by soft voting."""

    def __init__(self, models: list, options: InferenceOptions | None = None,
                 names: list[str] | None = None) -> None:
        if not models:
            raise PredictError("at least one --model is needed")
        self.upscalers = [Upscaler(m, options) for m in models]
        scales = {u.scale for u in self.upscalers}
        if len(scales) != 1:
            raise PredictError(f"models have different scales {sorted(scales)}; an ensemble needs one")
        self.scale = scales.pop()
        self.names = names or model_names(models)
        self.refiner = None  # LR-consistency refinement (upres.degradation.refine.Refiner)

    def predict_float(self, rgb: np.ndarray) -> list[np.ndarray]:
        return [u.upscale_float(rgb) for u in self.upscalers]

    def validate(self, val_dir: Path, crop_border: int | None = None) -> dict:
        """Each model's predictions and PSNR on ``val_dir/lr`` vs ``val_dir/hr``."""
        return self.validate_files(match_by_stem({"lr": val_dir / "lr", "hr": val_dir / "hr"}),
                                   crop_border)

    def validate_files(self, files: list[dict], crop_border: int | None = None) -> dict:
        """``validate`` for a list of ``{"lr": path, "hr": path}``."""
        border = self.scale if crop_border is None else crop_border
        preds, targets, truths, per_model = [], [], [], [[] for _ in self.names]
        for f in files:
            lr, hr = images.read_image(f["lr"]), images.read_image(f["hr"])
            problem = images.scale_mismatch(lr, hr, self.scale, f["lr"], f["hr"])
            if problem:
                raise EvalError(problem)
            outs = self.predict_float(rgb_input(lr, f["lr"]))
            for i, out in enumerate(outs):
                per_model[i].append(metrics.psnr(to_image(out, hr), hr, border))
            preds.append(np.stack(outs))
            truths.append(hr)
            targets.append(images.gray_to_rgb(images.to_float(hr)))
        return {"files": files, "preds": preds, "targets": targets, "hr": truths, "border": border,
                "psnr": [float(np.mean(p)) for p in per_model]}

    @staticmethod
    def ensemble_psnr(val: dict, coefficients: np.ndarray) -> float:
        scores = [metrics.psnr(to_image(fuse(list(p), coefficients), hr), hr, val["border"])
                  for hr, p in zip(val["hr"], val["preds"])]
        return float(np.mean(scores))


# --------------------------------------------------------------------------- the command


@dataclass
class PredictResult:
    output: Path
    files: list[Path]
    weights: list[float]  # the soft-voting coefficients, in model order
    val: dict = field(default_factory=dict)
    zip_path: Path | None = None


def _check_request(input_dir: Path, output_dir: Path, val_dir, report_dir) -> list[Path]:
    """Everything that can be refused before a model is loaded; returns the inputs."""
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
    return inputs


def _choose_coefficients(predictor: Predictor, spec: str, n_models: int, val_dir,
                         report_dir) -> tuple[np.ndarray, dict]:
    """The soft-voting coefficients and the validation scores (with ``--val``)."""
    chosen = parse_coefficients(spec, n_models) if n_models > 1 else np.ones(1)
    if val_dir is None:
        if isinstance(chosen, str):
            raise PredictError(f"--weights {spec} needs --val DIR (a folder with lr/ and hr/) to "
                               "score the models; or give explicit weights like 0.5,0.5")
        return chosen, {}
    val = predictor.validate(Path(val_dir))
    if isinstance(chosen, str):
        chosen = (fit_coefficients(val["preds"], val["targets"]) if chosen == "fit"
                  else coefficients_from_psnr(val["psnr"], chosen))
    scores = {"models": dict(zip(predictor.names, val["psnr"])),
              "ensemble": predictor.ensemble_psnr(val, chosen),
              "crop_border": val["border"], "images": len(val["files"])}
    if predictor.refiner is not None:
        scores["refine"] = choose_refinement(predictor.refiner, val, chosen)
    if report_dir is not None:
        _val_report(predictor, val, chosen, Path(val_dir), Path(report_dir))
    return chosen, scores


def choose_refinement(refiner, val: dict, coefficients: np.ndarray) -> dict:
    """Enable back-projection for the fingerprint groups whose validation PSNR it raises."""
    gains: dict[int, list[float]] = {}
    for f, hr, p in zip(val["files"], val["hr"], val["preds"]):
        lr = rgb_input(images.read_image(f["lr"]), f["lr"])
        fused = fuse(list(p), coefficients)
        group = refiner.group(lr)
        refined = refiner(fused, lr, group)
        gain = (metrics.psnr(to_image(refined, hr), hr, val["border"])
                - metrics.psnr(to_image(fused, hr), hr, val["border"]))
        gains.setdefault(group, []).append(gain)
    refiner.enabled = {g for g, v in gains.items() if np.mean(v) > 0}
    return {"gain_by_group": {str(g): float(np.mean(v)) for g, v in sorted(gains.items())},
            "enabled_groups": sorted(refiner.enabled)}


def _val_report(predictor: Predictor, val: dict, coefficients: np.ndarray, val_dir: Path,
                report_dir: Path) -> Path:
    """Write each model's and the ensemble's validation predictions, then the HTML report."""
    from upres.scoring.report import build_report, safe_name

    names = [*predictor.names, "ensemble"] if len(predictor.names) > 1 else list(predictor.names)
    folders = {name: report_dir / "predictions" / safe_name(name) for name in names}
    for f, hr, p in zip(val["files"], val["hr"], val["preds"]):
        outs = list(p) + ([fuse(list(p), coefficients)] if len(names) > len(predictor.names) else [])
        for name, out in zip(names, outs):
            images.write_image(folders[name] / f"{f['hr'].stem}.png", to_image(out, hr))
    return build_report(val_dir / "hr", val_dir / "lr", folders, report_dir, val["border"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_staging(output_dir: Path) -> list[Path]:
    """Staging folders ``.NAME.PID.xxxx`` of ``output_dir`` left by a killed run (their process
    is gone); a running predict's own folder is kept."""
    removed = []
    for folder in output_dir.parent.glob(f".{output_dir.name}.*"):
        pid = folder.name[len(output_dir.name) + 2:].split(".")[0]
        if folder.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _write_submission(predictor: Predictor, coefficients: np.ndarray, inputs: list[Path],
                      output_dir: Path, progress: bool, shard: Shard) -> list[str]:
    """Fill a hidden staging folder (each process its share of the inputs) and rename it to
    ``output_dir`` only when every process has finished."""
    from tqdm import tqdm

    staging = None
    if shard.main:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(output_dir)
        staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.{os.getpid()}.",
                                        dir=output_dir.parent))
    staging = shard.broadcast(staging)
    written, failure = [], None
    try:
        upscaler = predictor.upscalers[0]
        for src in tqdm(shard.take(inputs), desc="predict", unit="img",
                        disable=not (progress and shard.main)):
            img = images.read_image(src, upscaler.options.max_pixels)
            upscaler.check_fits(img, src)
            rgb = rgb_input(img, src)
            fused = fuse(predictor.predict_float(rgb), coefficients)
            if predictor.refiner is not None:
                fused = predictor.refiner(fused, rgb)
            images.write_image(staging / f"{src.stem}.png", to_image(fused, img))
            written.append(f"{src.stem}.png")
    except UpresError as err:
        failure = err
    outcomes = shard.gather((written, None if failure is None else str(failure)))
    errors = [message for _, message in outcomes if message]
    if errors or not shard.main:
        if shard.main:
            shutil.rmtree(staging, ignore_errors=True)
        if failure is not None:
            raise failure
        if errors:
            raise PredictError(errors[0])
        return sorted(name for names, _ in outcomes for name in names)
    try:
        if output_dir.exists():
            output_dir.rmdir()  # empty, checked before
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(name for names, _ in outcomes for name in names)


def _build_predictor(models: list, options, refine, val_dir, experts, route) -> Predictor:
    """The models (or routed experts) and the refinement, refused before anything is loaded."""
    if refine is not None and val_dir is None:
        raise PredictError("--refine needs --val DIR: refinement is applied only where it raises "
                           "the validation PSNR")
    if experts is not None:
        if models:
            raise PredictError("--experts replaces --model: the experts file names the models")
        from upres.inference.route import RoutedPredictor

        predictor = RoutedPredictor(experts, route, options)
    else:
        predictor = Predictor(models, options)
    if refine is not None:
        from upres.degradation.fingerprint import Fingerprint
        from upres.degradation.refine import Refiner

        predictor.refiner = Refiner(Fingerprint.load(refine))
    return predictor


def predict(models: list, input_dir: str | Path, output_dir: str | Path,
            weights: str = "psnr", val_dir: str | Path | None = None, make_zip: bool = False,
            options: InferenceOptions | None = None, progress: bool = True,
            report_dir: str | Path | None = None, shard: Shard | None = None,
            on_note: Callable[[str], None] | None = None,
            refine: str | Path | None = None, experts: str | Path | None = None,
            route: str = "fingerprint") -> PredictResult:
    """Upscale every image of ``input_dir`` into the new folder ``output_dir`` (PNG, same stems),
    fusing several models by soft voting (``weights``: a rule or explicit coefficients).

    The folder is filled under a temporary name and renamed at the end, so it either holds the
    whole submission or does not exist. Under torchrun each process (``shard``) predicts its share
    of the inputs; validation, the report and the files beside the folder are rank 0's.
    ``refine``: a fingerprint.json; LR-consistency refinement for the groups where it raises the
    validation PSNR (needs ``val_dir``). ``experts``: an experts.json; each image goes to its
    fingerprint group's model (``route`` fingerprint) or a probability-weighted mix (soft)."""
    shard = shard or Shard()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    inputs = _check_request(input_dir, output_dir, val_dir, report_dir)
    predictor = _build_predictor(models, options, refine, val_dir, experts, route)
    models = [experts] if experts is not None else models
    for name, upscaler in zip(predictor.names, predictor.upscalers):
        if on_note:  # which backend and precision each model runs with, and why
            on_note(f"{name}: {'; '.join(upscaler.notes)}")
    chosen, val_scores = shard.broadcast(
        _choose_coefficients(predictor, weights, len(models), val_dir, report_dir)
        if shard.main or val_dir is None else None)
    written = _write_submission(predictor, chosen, inputs, output_dir, progress, shard)
    if not shard.main:
        return PredictResult(output_dir, [output_dir / n for n in written],
                             [float(w) for w in chosen], val_scores)
    info = {"models": [str(m) for m in models], "weights": [float(w) for w in chosen],
            "weight_rule": weights if len(models) > 1 else "single model",
            "self_ensemble": (options or InferenceOptions()).self_ensemble,
            "refine": str(refine) if refine else None,
            "validation_psnr": val_scores}
    atomic_write_bytes(output_dir.parent / f"{output_dir.name}.ensemble.json",
                       (json.dumps(info, indent=2) + "\n").encode())
    zip_path = None
    if make_zip:
        zip_path = output_dir.parent / f"{output_dir.name}.zip"
        with atomic_path(zip_path) as tmp:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
                for name in written:
                    zf.write(output_dir / name, name)
    return PredictResult(output_dir, [output_dir / n for n in written],
                         [float(w) for w in chosen], val_scores, zip_path)
