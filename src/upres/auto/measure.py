"""Measuring a model on validation pairs: PSNR, timed passes, the options and precision the end
runs a start in, and what an arm's training logged."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from upres.auto.journal import AutoRun
from upres.io import images
from upres.io.files import read_jsonl

BICUBIC = "bicubic"  # the end's model where nothing beats bicubic in the time (auto.json "models")


def score(model, files: list[dict], scale: int, device: str, self_ensemble: str = "off",
           dtype: str = "fp32"):
    """(mean PSNR, seconds) of a model on validation pairs, as training validation scores."""
    from upres.inference.upscaler import Upscaler

    up = Upscaler(model, device=device, backend="torch", dtype=dtype, tile=0,
                  self_ensemble=self_ensemble, cache_converted=False)
    return score_with(up, files, scale)


def score_with(up, files: list[dict], scale: int) -> tuple[float, float]:
    """(mean PSNR, seconds) of an ``Upscaler`` on validation pairs."""
    from upres.scoring import metrics

    start, scores = time.perf_counter(), []
    for f in files:
        lr, hr = images.read_image(f["lr"]), images.read_image(f["hr"])
        scores.append(metrics.psnr(up.upscale_array(lr), hr, scale))
    return float(np.mean(scores)), time.perf_counter() - start


FP32 = {"dtype": "fp32", "speed_ratio": 1.0, "why": "nothing to compare"}


TORCH = {"backend": "torch", "why": "nothing to compare"}


def timed_pass(up, lr: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Seconds per LR MP of one image as the submission runs it, the first call's extra
    seconds, and the output. OpenVINO's first inference at a new size costs extra once per model,
    not per image (x4plus-anime on a 512x512 test image here: 27.7 s, then 19.4; PyTorch 38.8,
    then 40.2): a single timing had the 12 test images of big6 reserved 1.65x their time, and
    the run ended at 15:57 of 20:00. So OpenVINO runs the image twice and the second is timed."""
    megapixels = lr.shape[0] * lr.shape[1] / 1e6
    start = time.perf_counter()
    sr = up.upscale_float(lr)
    first = time.perf_counter() - start
    if up.backend.name != "openvino":
        return first / megapixels, 0.0, sr
    start = time.perf_counter()
    up.upscale_float(lr)
    again = time.perf_counter() - start
    return again / megapixels, max(first - again, 0.0), sr


def end_options(run: AutoRun, dtype: str, backend: str | None = None, **overrides):
    """How the end runs its models (``InferenceOptions``): through OpenVINO where
    ``choose_end_backend`` chose it (``backend``, by default as recorded; PyTorch for a family
    it does not convert), conversions kept in ``RUN/openvino``, in int8 where it was chosen (each
    model quantized on the recorded calibration); else through PyTorch."""
    from upres.inference.upscaler import InferenceOptions

    int8 = {}
    if backend is None:  # the end's models, as recorded (a backend named: one measured for it)
        recorded = run.journal["candidates"].get("end_backend", TORCH)
        backend, int8 = recorded["backend"], recorded.get("int8", {})
    if backend == "openvino" and int8.get("keep") and dtype != "fp32":
        dtype = "int8"  # (chosen on the reference start: each end model is quantized once)
        overrides = {"calibrate": tuple(map(Path, int8["calibrate"])),
                     "calibrate_pairs": tuple((Path(a), Path(b)) for a, b in int8["pairs"]), **overrides}
    options = {"backend": "auto" if backend == "openvino" else "torch", "dtype": dtype,
               "device": run.shard.device, "convert_cache": run.out / "openvino", **overrides}
    return InferenceOptions(**options)


def end_dtype(run: AutoRun, arms: list[str]) -> str:
    """The precision the end phases run ``arms`` in: the one measured on the reference start where
    every arm's family runs correctly in it, else fp32 (a winner of another family: fp16 on CUDA
    is not safe for window transformers); fp32 in records from before it was measured."""
    dtype = run.journal["candidates"].get("precision", FP32)["dtype"]
    return dtype if all(runs_in(start_of(run, arm), dtype) for arm in arms) else "fp32"


def start_of(run: AutoRun, arm: str) -> dict | None:
    """The candidate an arm starts from (its record at the candidates phase)."""
    name = next((a["name"][:-len(a["variant"]) - 1] for a in run.journal["probes"]["arms"]
                 if a["name"] == arm), None)
    return next((c for c in run.journal["candidates"]["candidates"] if c["name"] == name), None)


def runs_in(candidate: dict | None, dtype: str) -> bool:
    """Whether a candidate's family supports ``dtype`` (records without dtypes: as measured)."""
    return candidate is None or dtype in candidate.get("dtypes", [dtype])


def megapixels_of(files: list[dict]) -> float:
    return sum(np.prod(images.header_size(f["lr"])) for f in files) / 1e6


def short_name(source: str) -> str:
    path = Path(str(source))
    return path.stem if path.suffix else str(source)


def trains(arm: dict) -> bool:
    return arm["variant"] != "untrained"


def arm_psnr(run: AutoRun, name: str) -> tuple[float, int]:
    """An arm's latest validation PSNR and step, from its metrics."""
    scores = [(r["val_psnr"], r["step"]) for r in arm_metrics(run.out / "arms" / name)
              if "val_psnr" in r]
    return scores[-1] if scores else (-math.inf, 0)


def arm_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return read_jsonl(path) if path.exists() else []


def best_weights(run: AutoRun, name: str) -> Path | str | None:
    """An arm's best weights so far (its start before it trained; None for a preset that has
    not trained yet)."""
    path = run.out / "arms" / name / "best.safetensors"
    if path.exists():
        return path
    return next(a.get("source") for a in run.journal["probes"]["arms"] if a["name"] == name)
