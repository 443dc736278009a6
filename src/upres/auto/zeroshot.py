"""A candidate that costs no training: the soft vote of the best starts as published (several
PSNR-trained models often err differently), scored on validation beside them at step 0. The
end takes it where it scores higher than what trained and its test pass fits the time left."""

from __future__ import annotations

from upres.auto.costs import conversions_of, seconds_on_test
from upres.auto.journal import AutoRun
from upres.auto.measure import FP32, runs_in

MEMBERS = 3  # the best-scored starts above bicubic at step 0, voted together
SHARE = 0.05  # of the time left, at most, for validating it (at its members' timed speed)
WHY = "the zero-shot ensemble of starts as published"


def zero_shot_ensemble(run: AutoRun, scored: list[dict], files: list[dict], bicubic: float) -> dict:
    """The soft vote of up to ``MEMBERS`` starts with weights (``source``) that scored above
    ``bicubic`` at step 0, fitted and scored on the same validation pairs in fp32 as they were
    (a record with ``why`` and no ``val_psnr`` where fewer than two qualify or validating them
    would take over ``SHARE`` of the time left)."""
    from upres.inference.ensemble import Predictor, fit_coefficients
    from upres.inference.upscaler import InferenceOptions

    above = [c for c in scored if "source" in c and c.get("psnr0") is not None and c["psnr0"] > bicubic]
    members = sorted(above, key=lambda c: -c["psnr0"])[:MEMBERS]
    if len(members) < 2:
        return {"why": f"{len(members)} start(s) scored above bicubic at step 0; an ensemble needs two"}
    seconds = sum(c["val_seconds"] for c in members)
    if seconds > SHARE * run.clock.left():
        return {"why": f"validating it would take ~{seconds:.0f} s, over {SHARE:.0%} of the "
                       f"{run.clock.left():.0f} s left"}
    options = InferenceOptions(backend="torch", dtype="fp32", device=run.shard.device, tile=0)
    val = Predictor([c["source"] for c in members], options).validate_files(files)
    weights = fit_coefficients(val.preds, val.targets)
    psnr, best = val.fused_psnr(weights), max(c["psnr0"] for c in members)
    run.say(f"  zero-shot ensemble of {', '.join(c['name'] for c in members)}: {psnr:.3f} dB "
            f"on validation ({psnr - best:+.3f} over the best of them)")
    return {"members": [c["name"] for c in members], "sources": [c["source"] for c in members],
            "weights": [round(float(w), 4) for w in weights], "val_psnr": round(psnr, 4),
            "val_psnr_models": [round(float(p), 4) for p in val.psnr],
            "gain_db": round(psnr - best, 4)}


def prefer_zero_shot(run: AutoRun, end: dict, transforms: int) -> dict:
    """``end``, or the zero-shot ensemble where it scored higher on validation and its test pass
    (each image ``transforms`` times, its members' conversions) fits the time left; the record
    says which and why (``end["zero_shot"]``)."""
    zero = run.journal["candidates"].get("zero_shot") or {}
    if "val_psnr" not in zero:
        return end
    decision = {"val_psnr": zero["val_psnr"], "keep": False}
    if zero["val_psnr"] <= end["val_psnr"]:
        decision["why"] = f"under the end's {end['val_psnr']:.3f} dB on validation"
        return {**end, "zero_shot": decision}
    members = [c for c in run.journal["candidates"]["candidates"] if c["name"] in zero["members"]]
    cost = 1.1 * sum(seconds_on_test(run, None, [c]) * max(transforms, 1) for c in members) \
        + conversions_of(run, members)
    if cost > run.clock.left():
        decision["why"] = (f"its test pass would take ~{cost:.0f} s of the {run.clock.left():.0f} s "
                           "left")
        return {**end, "zero_shot": decision}
    run.say(f"  {WHY}: {zero['val_psnr']:.3f} dB on validation, over the end's "
            f"{end['val_psnr']:.3f}: kept")
    dtype = run.journal["candidates"].get("precision", FP32)["dtype"]
    return {"models": zero["sources"], "dtype": dtype if all(runs_in(c, dtype) for c in members) else "fp32",
            "weights": zero["weights"], "weights_by_group": {"keep": False, "why": WHY},
            "val_psnr": zero["val_psnr"], "val_psnr_models": zero["val_psnr_models"],
            "bicubic_psnr": end["bicubic_psnr"], "self_ensemble": transforms if transforms > 1 else 0,
            "refine": {"keep": False, "why": WHY},
            "zero_shot": {**decision, "keep": True, "why": f"over the end's {end['val_psnr']:.3f} dB",
                          "instead_of": {"models": end["models"], "val_psnr": end["val_psnr"]}}}
