"""int8 inference: an OpenVINO IR quantized by NNCF's post-training quantization, calibrated on
the user's own LR images (crops of them), with NNCF's accuracy control where there are pairs to
measure PSNR on (a layer that costs more than ``MAX_DROP_DB`` stays in higher precision). CPUs
with int8 dot products (AVX-512 VNNI, AVX-VNNI, AMX) run it at about twice their bf16 rate; a
CPU without them is told so and keeps bf16/fp32. The quantized IR is cached beside the plain
ones, keyed by the model, the calibration set and the settings."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from upres.errors import InferenceError
from upres.io import images
from upres.io.files import files_sha256

log = logging.getLogger("upres")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot products in hardware
CROPS = 300  # calibration crops (NNCF's default subset size)
CROP_SIDE = 64  # LR pixels a side of a calibration crop
MAX_DROP_DB = 0.05  # accuracy control: the most validation PSNR int8 may lose against fp32
# accuracy control reverts one group of layers to floating point per iteration, ranking the
# groups on a few pairs first: on x4plus (6 pairs) ranking and 20 minutes of iterations moved
# the drop from 0.25 dB to 0.23, so both are bounded
RESTORE_ITERATIONS = 8
RANKING_PAIRS = 3
NNCF_HINT = "pip install 'upres[int8]'"


def cpu_int8_flags() -> list[str]:
    """The int8 dot-product extensions this CPU has (empty: int8 would not be faster)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return [f for f in INT8_FLAGS if f in flags]


def int8_refusal() -> str | None:
    """Why int8 is not used here (None: it is): NNCF missing, or no int8 dot products."""
    if importlib.util.find_spec("nncf") is None:
        return f"int8 needs NNCF: {NNCF_HINT}"
    if not cpu_int8_flags():
        return ("this CPU has no int8 dot products (AVX-512 VNNI, AVX-VNNI or AMX): int8 would "
                "not be faster")
    return None


@dataclass
class Calibration:
    """What a quantization is calibrated (and, with pairs, checked) on, and its cache key."""

    crops: list[np.ndarray]  # (1, 3, side, side) float32 LR crops in [0, 1]
    pairs: list[tuple[np.ndarray, np.ndarray]]  # (LR (1, 3, h, w), HR (h*s, w*s, 3) uint8)
    key: str
    max_drop: float = MAX_DROP_DB


def calibration_set(lr_files: list[Path], pairs: list[tuple[Path, Path]] = (), count: int = CROPS,
                    side: int = CROP_SIDE, seed: int = 0, max_drop: float = MAX_DROP_DB) -> Calibration:
    """``count`` crops of ``side`` pixels taken in turn from the LR images (seeded), and the
    pairs read whole; keyed by the files' bytes and these settings."""
    if not lr_files:
        raise InferenceError("int8 calibration needs LR images (--calibrate DIR)")
    rng, crops = np.random.default_rng(seed), []
    loaded = [images.gray_to_rgb(images.to_float(images.read_image(p)))[..., :3] for p in lr_files]
    for k in range(count):
        img = loaded[k % len(loaded)]
        h, w = img.shape[:2]
        ch, cw = min(side, h), min(side, w)
        y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        crops.append(np.ascontiguousarray(img[y:y + ch, x:x + cw].transpose(2, 0, 1)[None],
                                          dtype=np.float32))
    read = [(np.ascontiguousarray(images.gray_to_rgb(images.to_float(images.read_image(lr)))[..., :3]
                                  .transpose(2, 0, 1)[None], dtype=np.float32),
             images.gray_to_rgb(images.read_image(hr))) for lr, hr in pairs]
    h = hashlib.sha256(json.dumps([count, side, seed, max_drop, RESTORE_ITERATIONS, RANKING_PAIRS]).encode())
    for path in [*lr_files, *(p for pair in pairs for p in pair)]:
        h.update(files_sha256(path).encode())
    return Calibration(crops, read, h.hexdigest()[:32], max_drop)


def quantized_key(model_key: str, calibration: Calibration) -> str:
    """The cache name of a model quantized on a calibration set. NNCF's version is read from its
    package metadata: importing NNCF took 1.8 s of a 10.2 s int8 ``upres upscale`` (x4plus,
    640x480) that then found its quantized model in the cache."""
    try:
        nncf_version = importlib.metadata.version("nncf")
    except importlib.metadata.PackageNotFoundError:
        nncf_version = "none"
    text = f"{model_key}|{calibration.key}|nncf-{nncf_version}"
    return "int8-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def quantize(ir, calibration: Calibration, scale: int):
    """The IR quantized to int8: with accuracy control where the calibration has pairs (validation
    PSNR, RGB, border ``scale``), else plain post-training quantization. Says how long it took."""
    import nncf

    from upres.scoring import metrics

    start = time.perf_counter()
    dataset = nncf.Dataset(calibration.crops)
    if calibration.pairs:
        def psnr(compiled, pairs) -> float:
            scores = []
            for lr, hr in pairs:
                out = np.asarray(compiled(lr)[0])[0].transpose(1, 2, 0)
                sr = np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
                scores.append(metrics.psnr(sr, hr, scale))
            return float(np.mean(scores))

        log.info("quantizing to int8 on %d crops, keeping within %.2f dB of fp32 on %d pairs ...",
                 len(calibration.crops), calibration.max_drop, len(calibration.pairs))
        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

        restorer = AdvancedAccuracyRestorerParameters(
            max_num_iterations=RESTORE_ITERATIONS,
            ranking_subset_size=min(RANKING_PAIRS, len(calibration.pairs)))
        quantized = nncf.quantize_with_accuracy_control(
            ir, dataset, nncf.Dataset(calibration.pairs, lambda pair: pair[0]), validation_fn=psnr,
            max_drop=calibration.max_drop, drop_type=nncf.DropType.ABSOLUTE,
            preset=nncf.QuantizationPreset.MIXED, subset_size=len(calibration.crops),
            advanced_accuracy_restorer_parameters=restorer)
    else:
        log.info("quantizing to int8 on %d crops of your images ...", len(calibration.crops))
        quantized = nncf.quantize(ir, dataset, preset=nncf.QuantizationPreset.MIXED,
                                  subset_size=len(calibration.crops))
    log.info("quantized in %.0f s (kept for the next run)", time.perf_counter() - start)
    return quantized
