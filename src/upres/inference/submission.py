"""A submission: every image of a test folder predicted by one model or a soft-voting ensemble
(``upres.inference.ensemble``) into a new folder that appears complete or not at all, with the
weights and validation scores beside it (``NAME.ensemble.json``) and an optional zip."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from upres.errors import PredictError, UpresError
from upres.inference.ensemble import (
    Coefficients,
    Predictor,
    Validation,
    choose_refinement,
    coefficients_for,
    coefficients_from_psnr,
    fit_coefficients,
    fuse,
    parse_coefficients,
    rgb_input,
    to_image,
)
from upres.inference.route import RoutedPredictor
from upres.inference.shard import Shard
from upres.inference.upscaler import InferenceOptions
from upres.io import images
from upres.io.files import (
    atomic_path,
    atomic_write_bytes,
    begin_staging,
    check_output_file,
    check_output_folder,
    publish_folder,
    staged_folder,
)

# --------------------------------------------------------------------------- the command


@dataclass
class PredictResult:
    output: Path
    files: list[Path]
    weights: list[float]  # the soft-voting coefficients, in model order
    val: dict = field(default_factory=dict)
    zip_path: Path | None = None


def _check_request(input_dir: Path, output_dir: Path, val_dir, report_dir, make_zip: bool,
                   overwrite: bool) -> list[Path]:
    """Everything that can be refused before a model is loaded; returns the inputs."""
    check_output_folder(output_dir, overwrite)
    check_output_file(output_dir.parent / f"{output_dir.name}.ensemble.json", overwrite)
    if make_zip:
        check_output_file(output_dir.parent / f"{output_dir.name}.zip", overwrite)
    if report_dir is not None:
        check_output_folder(Path(report_dir), overwrite, "report folder")
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
                         report_dir, overwrite: bool = False) -> tuple[np.ndarray, dict]:
    """The soft-voting coefficients and the validation scores (with ``--val``)."""
    chosen = parse_coefficients(spec, n_models) if n_models > 1 else np.ones(1)
    if val_dir is None:
        if isinstance(chosen, str):
            raise PredictError(f"--weights {spec} needs --val DIR (a folder with lr/ and hr/) to "
                               "score the models; or give explicit weights like 0.5,0.5")
        return chosen, {}
    val = predictor.validate(Path(val_dir))
    if isinstance(chosen, str):
        chosen = (fit_coefficients(val.preds, val.targets) if chosen == "fit"
                  else coefficients_from_psnr(val.psnr, chosen))
    scores = {"models": dict(zip(predictor.names, val.psnr)),
              "ensemble": val.fused_psnr(chosen),
              "crop_border": val.border, "images": len(val.files)}
    if predictor.refiner is not None:
        scores["refine"] = choose_refinement(predictor.refiner, val, chosen)
    if isinstance(predictor, RoutedPredictor):  # route only labels confident enough
        scores["routing"] = predictor.choose_threshold(val.files)
    if report_dir is not None:
        with staged_folder(report_dir, overwrite) as staging:
            _val_report(predictor, val, chosen, Path(val_dir), staging)
    return chosen, scores


def _val_report(predictor: Predictor, val: Validation, coefficients: np.ndarray, val_dir: Path,
                report_dir: Path) -> Path:
    """Write each model's and the ensemble's validation predictions, then the HTML report."""
    from upres.scoring.report import build_report, safe_name

    names = [*predictor.names, "ensemble"] if len(predictor.names) > 1 else list(predictor.names)
    folders = {name: report_dir / "predictions" / safe_name(name) for name in names}
    for f, hr, p in zip(val.files, val.hr, val.preds):
        outs = list(p) + ([fuse(list(p), coefficients)] if len(names) > len(predictor.names) else [])
        for name, out in zip(names, outs):
            images.write_image(folders[name] / f"{f['hr'].stem}.png", to_image(out, hr))
    return build_report(val_dir / "hr", val_dir / "lr", folders, report_dir, val.border)


def write_submission(predictor: Predictor, coefficients: Coefficients, inputs: list[Path],
                     output_dir: Path, progress: bool, shard: Shard,
                     on_plan: Callable[[str], None] | None = None, overwrite: bool = False) -> list[str]:
    """Fill a hidden staging folder (each process its share of the inputs) and rename it to
    ``output_dir`` only when every process has finished."""
    from tqdm import tqdm

    staging = shard.broadcast(begin_staging(output_dir) if shard.main else None)
    written, failure = [], None
    try:
        upscaler = predictor.upscalers[0]
        for src in tqdm(shard.take(inputs), desc="predict", unit="img",
                        disable=not (progress and shard.main)):
            img = images.read_image(src, upscaler.options.max_pixels)
            upscaler.check_fits(img, src)
            for name, each in zip(predictor.names, predictor.upscalers) if on_plan else ():
                each.engine.on_plan = lambda plan, m=name, s=src.name: on_plan(f"{s} ({m}): {plan}")
            rgb = rgb_input(img, src)
            fused = predictor.predict_fused(rgb, coefficients_for(coefficients, rgb))
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
    publish_folder(staging, output_dir, overwrite)
    return sorted(name for names, _ in outcomes for name in names)


def write_bicubic(inputs: list[Path], output_dir: Path, scale: int, overwrite: bool = False) -> list[str]:
    """The bicubic baseline of every input (the kernel every score stands beside), published
    like a model's submission: the answer where no model beats bicubic in the time there is."""
    from upres.scoring.metrics import bicubic_upscale

    with staged_folder(output_dir, overwrite) as staging:
        for src in inputs:
            images.write_image(staging / f"{src.stem}.png", bicubic_upscale(images.read_image(src), scale))
    return sorted(f"{src.stem}.png" for src in inputs)


def zip_folder(folder: Path, names: list[str], overwrite: bool = False) -> Path:
    """``FOLDER.zip`` beside the folder, holding ``names`` (stored, not compressed: PNGs are)."""
    zip_path = folder.parent / f"{folder.name}.zip"
    with atomic_path(zip_path, overwrite) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for name in names:
                zf.write(folder / name, name)
    return zip_path


def _build_predictor(models: list, options, refine, val_dir, experts, route) -> Predictor:
    """The models (or routed experts) and the refinement, refused before anything is loaded."""
    if refine is not None and val_dir is None:
        raise PredictError("--refine needs --val DIR: refinement is applied only where it raises "
                           "the validation PSNR")
    if experts is not None:
        if models:
            raise PredictError("--experts replaces --model: the experts file names the models")
        predictor = RoutedPredictor(experts, route, options)
    else:
        predictor = Predictor(models, options)
    if refine is not None:
        from upres.degradation.fingerprint import Fingerprint
        from upres.degradation.refine import Refiner

        predictor.refiner = Refiner(Fingerprint.load(refine))
    return predictor


def predict_folder(models: list, input_dir: str | Path, output_dir: str | Path,
                   weights: str = "psnr", val_dir: str | Path | None = None,
                   make_zip: bool = False, options: InferenceOptions | None = None,
                   progress: bool = True, report_dir: str | Path | None = None,
                   shard: Shard | None = None, on_note: Callable[[str], None] | None = None,
                   refine: str | Path | None = None, experts: str | Path | None = None,
                   route: str = "fingerprint", on_plan: Callable[[str], None] | None = None,
                   overwrite: bool = False) -> PredictResult:
    """Upscale every image of ``input_dir`` into the new folder ``output_dir`` (PNG, same stems),
    fusing several models by soft voting (``weights``: a rule or explicit coefficients).

    The folder is filled under a temporary name and renamed at the end, so it either holds the
    whole submission or does not exist. Under torchrun each process (``shard``) predicts its share
    of the inputs; validation, the report and the files beside the folder are rank 0's.
    ``refine``: a fingerprint.json; LR-consistency refinement for the groups where it raises the
    validation PSNR (needs ``val_dir``). ``experts``: an experts.json; each image goes to its
    fingerprint group's model (``route`` fingerprint) or a probability-weighted mix (soft).
    ``on_note`` hears which backend runs each model and why; ``on_plan`` each image's tile plan
    per model, before it runs."""
    shard = shard or Shard()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    inputs = _check_request(input_dir, output_dir, val_dir, report_dir, make_zip, overwrite)
    predictor = _build_predictor(models, options, refine, val_dir, experts, route)
    models = [experts] if experts is not None else models
    for name, upscaler in zip(predictor.names, predictor.upscalers):
        if on_note:  # which backend and precision each model runs with, and why
            on_note(f"{name}: {'; '.join(upscaler.notes)}")
    chosen, val_scores = shard.broadcast(
        _choose_coefficients(predictor, weights, len(models), val_dir, report_dir, overwrite)
        if shard.main or val_dir is None else None)
    written = write_submission(predictor, chosen, inputs, output_dir, progress, shard, on_plan,
                               overwrite)
    if not shard.main:
        return PredictResult(output_dir, [output_dir / n for n in written],
                             [float(w) for w in chosen], val_scores)
    info = {"models": [str(m) for m in models], "weights": [float(w) for w in chosen],
            "weight_rule": weights if len(models) > 1 else "single model",
            "self_ensemble": (options or InferenceOptions()).self_ensemble,
            "ensemble_transforms": (options or InferenceOptions()).ensemble_transforms,
            "refine": str(refine) if refine else None,
            "validation_psnr": val_scores}
    atomic_write_bytes(output_dir.parent / f"{output_dir.name}.ensemble.json",
                       (json.dumps(info, indent=2) + "\n").encode(), overwrite)
    zip_path = zip_folder(output_dir, written, overwrite) if make_zip else None
    return PredictResult(output_dir, [output_dir / n for n in written],
                         [float(w) for w in chosen], val_scores, zip_path)
