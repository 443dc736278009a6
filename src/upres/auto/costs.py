"""What the time after training costs (validation and test passes per megapixel, conversions),
so that training stops in time for the end to fit the budget."""

from __future__ import annotations

from upres.auto.dataset import UNSEEN_PAIRS
from upres.auto.journal import AutoRun
from upres.auto.measure import (
    FP32,
    TORCH,
    best_weights,
    end_dtype,
    end_options,
    runs_in,
    start_of,
    timed_pass,
)
from upres.io import images


def reserve_after_training(run: AutoRun, transforms: int, ensemble: bool,
                           starts: list[dict] | None = None) -> float:
    """Seconds the end needs: validating the final model(s) (an ensemble also on the training
    pairs of groups validation may not see), predicting the test set (each
    image ``transforms`` times: a self-ensemble's flips/rotations), writing the report; from
    the measured speed of the models it will run (before the halving has chosen, the slowest
    of ``starts``, by default of every start)."""
    halving = run.journal.data["phases"].get("halving", {})
    names = [halving.get("winner")] + ([halving.get("runner_up")] if ensemble else [])
    vals = 1 + (unseen_share(run) if ensemble else 0.0)
    passes = sum(vals * val_seconds(run, n, end=True, starts=starts)
                 + seconds_on_test(run, n, starts) * transforms for n in names)
    refine = run.journal["candidates"].get("test_costs", {}).get("refine_seconds_per_mp", 0.0)
    passes += refine * run.journal["check"]["test_megapixels"]
    report = min(10.0, 0.02 * run.options.budget)  # the report and the zip
    return 1.1 * passes + conversions(run, names, starts) + report


def unseen_share(run: AutoRun) -> float:
    """The training pairs an ensemble's end may score for the recipe groups validation did not
    see (``fit_unseen_groups``), as a share of a validation pass: ``UNSEEN_PAIRS`` for each
    fingerprint group beyond the validation's pairs."""
    groups = run.journal.data["phases"].get("fingerprint", {}).get("groups", 1)
    used = run.journal["candidates"].get("val_used") or groups
    return UNSEEN_PAIRS * max(groups - used, 0) / max(used, 1)


def conversions(run: AutoRun, names: list[str | None], starts: list[dict] | None) -> float:
    """Seconds to convert the end's models to OpenVINO (as timed on the reference start), once each:
    the final's weights are new; a runner-up's were converted at the levers, but not on resume."""
    cands = [start_of(run, n) if n else None for n in names]
    count = sum(_openvino_runs(run, c) if c else any(_openvino_runs(run, s) for s in
                (starts or run.journal["candidates"]["candidates"])) for c in cands)
    return count * per_conversion(run)


def per_conversion(run: AutoRun) -> float:
    """Seconds to make one end model's OpenVINO form: converted, and quantized where int8 runs."""
    backend = run.journal["candidates"].get("end_backend", TORCH)
    int8 = backend.get("int8", {})
    quantize = int8.get("quantize_seconds", 0.0) if int8.get("keep") else 0.0
    return backend.get("convert_seconds", 0.0) + quantize


def conversions_of(run: AutoRun, starts: list[dict]) -> float:
    """Seconds to convert these starts as published to OpenVINO, where the end runs them there."""
    return sum(_openvino_runs(run, c) for c in starts) * per_conversion(run)


def _per_mp(run: AutoRun, arm: str | None = None, end: bool = False,
            starts: list[dict] | None = None, calibrated: bool = True) -> float:
    """Inference seconds per input megapixel of an arm's start, as measured in fp32 (training
    validates in fp32) or, ``end``, in the end's precision (the slowest of ``starts``, by
    default of every start, where no arm is named), and as re-timed at the levers unless not
    ``calibrated``."""
    cands = starts or run.journal["candidates"]["candidates"]
    start = start_of(run, arm) if arm is not None else None
    cands = [start] if start else cands
    precision = run.journal["candidates"].get("precision", FP32)

    def seconds(cand: dict) -> float:  # the fast precision only for families that run in it
        fast = end and runs_in(cand, precision["dtype"])
        ratio = precision["speed_ratio"] if fast else 1.0
        if end and _openvino_runs(run, cand):
            ratio = run.journal["candidates"]["end_backend"]["speed_ratio"]
        return ratio * (cand.get("seconds_per_mp") or 0)

    return (run.end_speed if end and calibrated else 1.0) * max(seconds(c) for c in cands)


def _openvino_runs(run: AutoRun, cand: dict | None) -> bool:
    """Whether the end runs this start's family through OpenVINO (chosen, and not refused)."""
    backend = run.journal["candidates"].get("end_backend", TORCH)
    return backend["backend"] == "openvino" and cand is not None and cand.get("openvino", False)


def val_seconds(run: AutoRun, arm: str | None = None, end: bool = False,
                 starts: list[dict] | None = None) -> float:
    """One validation pass (over the pairs a validation uses)."""
    return _per_mp(run, arm, end, starts) * run.journal["candidates"]["val_megapixels"]


def val_dtype(run: AutoRun, arm: dict) -> str:
    """The precision training validates an arm in: the end's where its family runs in it (it
    scored within ``PRECISION_DB`` of fp32 at step 0), else fp32."""
    dtype = run.journal["candidates"].get("precision", FP32)["dtype"]
    return dtype if runs_in(arm, dtype) else "fp32"


def training_val_seconds(run: AutoRun, arm: dict) -> float:
    """One validation during training, in ``val_dtype``: at step 0's speed (an arm's record
    holds its start's figures)."""
    fast = val_dtype(run, arm) != "fp32"
    ratio = run.journal["candidates"].get("precision", FP32)["speed_ratio"] if fast else 1.0
    return ratio * (arm.get("seconds_per_mp") or 0) * run.journal["candidates"]["val_megapixels"]


def seconds_on_test(run: AutoRun, arm: str | None = None, starts: list[dict] | None = None) -> float:
    """One pass over the test set, in the end's precision (at the test images' size). Where the
    test images were timed as the submission runs them, the re-timing at the levers (of the
    validation images' flips) does not apply: on 512x512 test images it said 1.23x that timing,
    and the test set took 222 s against 227 s from the timing alone (refinement included)."""
    costs = run.journal["candidates"].get("test_costs", {})
    first = costs.get("timed", {}).get("first_call_seconds", 0.0)  # once per model (OpenVINO)
    if arm in run.test_per_mp:  # the winner, timed on the largest test image before the final
        return first + run.test_per_mp[arm] * run.journal["check"]["test_megapixels"]
    per_mp = _per_mp(run, arm, end=True, starts=starts, calibrated="timed" not in costs)
    return first + per_mp * costs.get("size_factor", 1.0) * run.journal["check"]["test_megapixels"]


def time_on_test_image(run: AutoRun, arm: str) -> float | None:
    """Seconds per MP of the winner as the end will run it, timed on the largest test image
    just before the final's reserve is fixed (None where the test images are not larger than
    the validation ones), unless it is the reference's network, timed there already (fine-tuning
    does not change a network's time). A size factor does not carry over to another network:
    on big6 without native bf16 OpenVINO ran x4plus at 226 s/MP on a 512x512 test image and
    228 on the validation centres, x4plus-anime at ~110 against 66, and the run ended at 21:11
    of 20:00."""
    from upres.inference.ensemble import rgb_input
    from upres.inference.upscaler import Upscaler

    cands = run.journal["candidates"]
    timed = cands.get("test_costs", {}).get("timed")
    if not timed:
        return None
    reference = next(c for c in cands["candidates"] if c["name"] == cands.get("reference", c["name"]))
    start = start_of(run, arm) or {}
    if [start.get(k) for k in ("arch", "hparams", "preset")] == \
            [reference.get(k) for k in ("arch", "hparams", "preset")]:
        run.say(f"  {arm}: {timed['seconds_per_mp']:.1f} s/MP on {timed['image']}, as timed on "
                f"{reference['name']} (the same network)")
        return timed["seconds_per_mp"]
    image = run.data / "test" / "lr" / timed["image"]
    up = Upscaler(best_weights(run, arm), end_options(run, end_dtype(run, [arm])))
    lr = rgb_input(images.read_image(image), image)
    run.say(f"  timing {arm} on {image.name}")
    per_mp = timed_pass(up, lr)[0]
    run.say(f"  {image.name}: {per_mp:.1f} s/MP")
    return per_mp
