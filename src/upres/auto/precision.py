"""The end's precision and backend: the fast precision (bf16 / fp16) and OpenVINO are taken only
where validation scores them within PRECISION_DB of fp32 and they are measurably faster."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from upres.auto.journal import AutoRun
from upres.auto.measure import (
    FP32,
    TORCH,
    end_options,
    megapixels_of,
    score,
    score_with,
    short_name,
    timed_pass,
)
from upres.io import images

PRECISION_DB = 0.01  # the fast inference precision may lose at most this against fp32
# and must be this share faster: on an H200, x4plus on minicomp's small validation images ran
# 1.38x slower in fp16 autocast than in fp32 (TF32), the casts outweighing the faster convolutions
PRECISION_GAIN = 0.05
BACKEND_GAIN = 0.05  # OpenVINO runs the end where it is at least this share faster than PyTorch
OPENVINO_MIN_END = 60.0  # seconds of the end's PyTorch passes under which a conversion cannot pay
# The end's passes over the test set as a conversion is weighed (before the levers choose): an x8
# self-ensemble. Counting one pass, the known6 end with GAN starts was put at 28 s and never tried
# OpenVINO; its x8 self-ensemble of two models then took 260 s of predicting in PyTorch bf16.
END_TEST_PASSES = 8
_PASSES = f"a pass over validation and {END_TEST_PASSES} over the test set"
INT8_DB = 0.05  # int8 may lose at most this against fp32 on validation (NNCF's accuracy control's drop)
# int8's best time against OpenVINO bf16 measured here (bench_int8, x4plus at 640x480: 0.56x; on
# known6's validation 0.60x): what a trial could save at most
INT8_BEST_RATIO = 0.55
# Quantizing costs this many times PyTorch fp32's inference over the calibration crops: on known6
# x4plus took 270 s for 300 crops of 64x64 (1.23 MP at 94 s/MP is 115 s), a trial the end's
# 76 s of savings could not repay, taken from a 30-minute budget
QUANTIZE_COST = 2.3


def measure_test_costs(run: AutoRun, first: tuple | None, files: list[dict], dtype: str,
                       backend: dict = TORCH) -> tuple[dict, dict]:
    """What timing the validation images misses about the test set, and the end's backend
    decided on it. Seconds per megapixel grow with the image (x4plus-anime in bf16 here: 9.8
    s/MP on 120x80, 32 s/MP on 512x512, as its activations outgrow the caches), so where the
    largest test image has over twice the pixels of the largest validation one, the reference start
    (``first``: its source, PyTorch's validation seconds per MP in the end's precision) is timed
    on it as the submission runs it, and test passes are scaled by ``size_factor``. Where
    OpenVINO scored as PyTorch (``backend``) and the test set holds 4 such images or more,
    both backends are timed on it and the faster one (by more than a conversion over the test
    set) runs the end: on 192x192 validation centres OpenVINO took 0.83x and, in another run,
    0.97x PyTorch's time, on a 512x512 test image 0.6x. And the refinement's back-projection,
    per test megapixel (on known6 0.13 s an image, on 512x512 ones 1.7 s)."""
    from upres.degradation.fingerprint import Fingerprint
    from upres.degradation.refine import back_project
    from upres.inference.ensemble import rgb_input
    from upres.inference.upscaler import Upscaler
    from upres.scoring import metrics

    def pixels(path: Path) -> int:
        return int(np.prod(images.header_size(path)))

    largest = max(images.list_images(run.data / "test" / "lr"), key=pixels)
    record: dict = {"size_factor": 1.0, "refine_seconds_per_mp": 0.0}
    lr = rgb_input(images.read_image(files[0]["lr"]), files[0]["lr"])
    if first is not None and pixels(largest) > 2 * max(pixels(f["lr"]) for f in files):
        source, torch_per_mp = first
        val_per_mp = {"torch": torch_per_mp}
        if backend.get("exact"):  # OpenVINO measured and scored as PyTorch
            openvino = {"openvino": backend["seconds"] / megapixels_of(files)}
            both = run.journal["check"]["test_megapixels"] >= 4 * pixels(largest) / 1e6
            val_per_mp = {**val_per_mp, **openvino} if both else openvino if \
                backend["backend"] == "openvino" else val_per_mp
        lr = rgb_input(images.read_image(largest), largest)
        per_mp, first = {}, {}
        for name in val_per_mp:
            up = Upscaler(source, end_options(run, dtype, name))
            run.say(f"  timing {short_name(source)} on the largest test image, {largest.name}"
                    + (f", in {up.backend.name}" if len(val_per_mp) > 1 else ""))
            per_mp[name], first[name], sr = timed_pass(up, lr)
            run.say(f"  {largest.name}: {per_mp[name]:.1f} s/MP against {val_per_mp[name]:.1f} on "
                    "validation images" + (f" (its first call {first[name]:.0f} s longer)" if first[name]
                                           else ""))
        backend = _backend_on_test(run, backend, per_mp, largest.name)
        chosen = backend["backend"] if len(per_mp) > 1 else next(iter(per_mp))
        record.update(size_factor=round(max(per_mp[chosen] / max(val_per_mp[chosen], 1e-9), 1.0), 3),
                      timed={"image": largest.name, "seconds_per_mp": round(per_mp[chosen], 3),
                             "val_seconds_per_mp": round(val_per_mp[chosen], 3),
                             "first_call_seconds": round(first[chosen], 1),
                             "backends": {k: round(v, 3) for k, v in per_mp.items()}})
    else:
        sr = rgb_input(metrics.bicubic_upscale(images.read_image(files[0]["lr"]), run.scale),
                       files[0]["lr"])
    fp = Fingerprint.load(run.out / "fingerprint" / "fingerprint.json")
    if len(fp.groups) > 1 and fp.classifier:  # refinement is possible
        start = time.perf_counter()
        back_project(sr, lr, fp.kernel(0), run.scale)
        seconds = time.perf_counter() - start
        record["refine_seconds_per_mp"] = round(seconds / (lr.shape[0] * lr.shape[1] / 1e6), 3)
    return record, backend


def _backend_on_test(run: AutoRun, backend: dict, per_mp: dict[str, float], image: str) -> dict:
    """The end's backend as timed on a test image where both were (else as it was): OpenVINO
    where it saves more than a conversion over the test set."""
    if len(per_mp) < 2:
        return backend
    saves = (per_mp["torch"] - per_mp["openvino"]) * run.journal["check"]["test_megapixels"] * END_TEST_PASSES
    chosen = "openvino" if saves > backend["convert_seconds"] else "torch"
    backend = {**backend, "backend": chosen, "why": backend["why"] + f"; on {image} "
               f"{per_mp['openvino']:.0f} s/MP against PyTorch's {per_mp['torch']:.0f}, "
               f"{saves:.0f} s saved over {END_TEST_PASSES} passes over the test set"}
    backend.pop("speed_ratio", None)
    if chosen == "openvino":
        backend["speed_ratio"] = backend["val_speed_ratio"]
    run.say(f"  end backend {chosen}, as timed on {image}")
    return backend


def choose_precision(model, files: list[dict], run: AutoRun, psnr32: float, seconds32: float) -> dict:
    """The precision of the end (levers, final validation, the test set): the device's fast one
    (bf16 on CPUs with native bf16, fp16 on CUDA) where it scores within ``PRECISION_DB`` of fp32
    on validation and is ``PRECISION_GAIN`` faster, else fp32. On a CPU with AMX, x4plus in bf16
    ran 4.5x faster than fp32 at the same PSNR, which makes self-ensemble and the ensemble
    affordable."""
    from upres.inference.devices import pick_dtype
    from upres.models.registry import describe

    fast = pick_dtype("auto", run.shard.device, describe(model).dtypes)
    if fast == "fp32":
        return {**FP32, "why": "no faster precision on this device"}
    score(model, files[:1], run.scale, run.shard.device, dtype=fast)  # warm-up of its kernels
    psnr, seconds = score(model, files, run.scale, run.shard.device, dtype=fast)
    exact, faster = psnr >= psnr32 - PRECISION_DB, seconds <= seconds32 * (1 - PRECISION_GAIN)
    ok = exact and faster
    record = {"dtype": fast if ok else "fp32", "psnr": {"fp32": round(psnr32, 4), fast: round(psnr, 4)},
              "seconds": {"fp32": round(seconds32, 3), fast: round(seconds, 3)},
              "speed_ratio": round(seconds / seconds32, 3) if ok else 1.0,
              "why": f"{fast} scored {psnr - psnr32:+.3f} dB against fp32 in "
                     f"{seconds / max(seconds32, 1e-9):.2f}x the time"
                     + ("" if exact else f" (more than {PRECISION_DB} dB lost)")
                     + ("" if faster else f" (not {PRECISION_GAIN:.0%} faster)")}
    run.say(f"  end precision {record['dtype']}: {record['why']}")
    return record


def choose_end_backend(source, files: list[dict], run: AutoRun, psnr32: float, seconds32: float,
                       precision: dict, test_megapixels: float) -> dict:
    """OpenVINO runs the end where it is installed, converts the reference start, scores within
    ``PRECISION_DB`` of fp32, is ``BACKEND_GAIN`` faster than PyTorch in the end's precision
    and saves more than its conversion over the end's passes (validation once, the test set
    ``END_TEST_PASSES`` times). On a 2-core CPU
    without native bf16 x4plus took 72 s on a 512x512 image in fp32 against PyTorch's 120 s
    (conversion 12 s, once per model): there the test set is most of the end, and a
    competition-size one can take the whole budget; on minicomp's 10 small test images it saved
    7 s a pass. ``speed_ratio`` is against PyTorch fp32, as the precision's is; the conversion
    is reserved for each model the end runs."""
    from upres.errors import InferenceError
    from upres.inference.openvino_backend import openvino_available
    from upres.inference.upscaler import Upscaler

    if run.shard.device != "cpu":
        return {**TORCH, "why": f"OpenVINO runs on the CPU, not {run.shard.device}"}
    if not openvino_available():
        return {**TORCH, "why": "OpenVINO is not installed (pip install 'upres[openvino]')"}
    torch_seconds = seconds32 * precision["speed_ratio"]
    share = 1 + END_TEST_PASSES * test_megapixels / megapixels_of(files)  # the end's passes, in validations
    if torch_seconds * share < OPENVINO_MIN_END:
        return {**TORCH, "why": f"{_PASSES} take PyTorch {torch_seconds * share:.0f} s: too short "
                "for a conversion to pay"}
    run.say(f"  {short_name(source)} through OpenVINO, to see if it runs the end faster")
    start = time.perf_counter()
    try:
        up = Upscaler(source, end_options(run, precision["dtype"], "openvino", tile=0))
    except InferenceError as err:
        return {**TORCH, "why": str(err)}
    if up.backend.name != "openvino":
        return {**TORCH, "why": up.backend.reason}
    convert = time.perf_counter() - start
    score_with(up, files[:1], run.scale)  # warm-up
    psnr, seconds = score_with(up, files, run.scale)
    saves = (torch_seconds - seconds) * share
    ok = psnr >= psnr32 - PRECISION_DB and seconds <= (1 - BACKEND_GAIN) * torch_seconds and saves > convert
    record = {"backend": "openvino" if ok else "torch", "dtype": up.backend.dtype,
              "exact": bool(psnr >= psnr32 - PRECISION_DB), "val_speed_ratio": round(seconds / seconds32, 3),
              "psnr": round(psnr, 4), "seconds": round(seconds, 3), "torch_seconds": round(torch_seconds, 3),
              "convert_seconds": round(convert, 2), "why": f"OpenVINO {up.backend.dtype} scored "
              f"{psnr - psnr32:+.3f} dB against PyTorch fp32 in {seconds / max(torch_seconds, 1e-9):.2f}x "
              f"PyTorch's {precision['dtype']} time, {saves:.0f} s saved over {_PASSES} for a "
              f"{convert:.0f} s conversion"}
    if ok:
        record["speed_ratio"] = round(seconds / max(seconds32, 1e-9), 3)
        record["int8"] = choose_int8(run, source, files, psnr32, record, share,
                                     seconds32 / megapixels_of(files))
        if record["int8"]["keep"]:
            ratio = record["int8"]["seconds"] / max(seconds32, 1e-9)
            record.update(dtype="int8", speed_ratio=round(ratio, 3))
    run.say(f"  end backend {record['backend']} ({record['dtype']}): {record['why']}"
            + (f"; {record['int8']['why']}" if "int8" in record else ""))
    return record


def choose_int8(run: AutoRun, source, files: list[dict], psnr32: float, backend: dict,
                share: float, fp32_per_mp: float) -> dict:
    """int8 for the end, where the CPU has int8 dot products: the reference start quantized on
    the test LR images, kept where it scores within ``INT8_DB`` of fp32 on validation, is
    ``BACKEND_GAIN`` faster than OpenVINO in the end's precision and saves more than its
    quantization over the end's passes (each end model is quantized once: the reserve counts it
    as a conversion). Not tried where the quantization, estimated from PyTorch fp32's speed
    (``fp32_per_mp``), would cost more than int8 could save at its best ratio. Validation is the
    accuracy control here: NNCF's own ranks every layer group on the pairs first, which on
    x4plus (about 350 groups) costs minutes a budget cannot give."""
    from upres.inference.int8 import CROP_SIDE, CROPS, int8_refusal
    from upres.inference.upscaler import Upscaler

    why = int8_refusal()
    if why:
        return {"keep": False, "why": why}
    estimate = QUANTIZE_COST * CROPS * CROP_SIDE ** 2 / 1e6 * fp32_per_mp
    at_most = backend["seconds"] * share * (1 - INT8_BEST_RATIO)
    if estimate >= at_most:
        return {"keep": False, "estimated_quantize_seconds": round(estimate, 1),
                "why": f"int8 not tried: quantizing would take about {estimate:.0f} s ({CROPS} crops), "
                       f"more than the {at_most:.0f} s it could save over {_PASSES} (at "
                       f"{INT8_BEST_RATIO}x OpenVINO {backend['dtype']}'s time)"}
    calibration = {"calibrate": [str(p) for p in images.list_images(run.data / "test" / "lr")],
                   "pairs": []}
    run.say(f"  {short_name(source)} quantized to int8, to see if it runs the end faster")
    start = time.perf_counter()
    up = Upscaler(source, end_options(run, "int8", "openvino", tile=0, **int8_options(calibration)))
    quantize = time.perf_counter() - start
    score_with(up, files[:1], run.scale)  # warm-up
    psnr, seconds = score_with(up, files, run.scale)
    saves = (backend["seconds"] - seconds) * share
    keep = (psnr >= psnr32 - INT8_DB and seconds <= (1 - BACKEND_GAIN) * backend["seconds"]
            and saves > quantize)
    return {"keep": bool(keep), "psnr": round(psnr, 4), "seconds": round(seconds, 3),
            "quantize_seconds": round(quantize, 2), **calibration,
            "why": f"int8 scored {psnr - psnr32:+.3f} dB against fp32 in "
                   f"{seconds / max(backend['seconds'], 1e-9):.2f}x OpenVINO {backend['dtype']}'s time, "
                   f"{saves:.0f} s saved over {_PASSES} for a {quantize:.0f} s quantization: "
                   + ("kept" if keep else "not kept")}


def int8_options(calibration: dict) -> dict:
    """The inference options that quantize a model on a recorded calibration."""
    return {"calibrate": tuple(map(Path, calibration["calibrate"])),
            "calibrate_pairs": tuple((Path(a), Path(b)) for a, b in calibration["pairs"])}
