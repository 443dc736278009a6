"""Phase levers: what self-ensemble, an ensemble with the runner-up and LR-consistency refinement
gain on validation, priced against what training would gain in the same time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from upres.auto.clock import LEVER_SHARE
from upres.auto.costs import reserve_after_training, seconds_on_test, val_seconds
from upres.auto.dataset import val_files, val_groups
from upres.auto.journal import AutoRun
from upres.auto.measure import arm_metrics, best_weights, end_dtype, end_options, trains
from upres.io import images

KEEP_DB = 0.01  # a lever at the end must gain at least this on validation to be kept
# validations spanning this ratio of steps, at least, read a slope (0.005 dB between steps 73
# and 74 read as 0.369 dB per e-fold on 512x512 pairs)
MIN_STEP_RATIO = 1.2


def training_value(run: AutoRun) -> dict:
    """What the winner's final training would lose if a lever took ``c`` of its seconds: its
    validation PSNR fitted as ``a + b ln(step)`` by least squares over all its validations (a
    halving round validates at its middle and its end), so the loss is ``b ln(S / S')`` for the
    final's end step ``S`` and the ``S'`` it reaches ``c`` seconds sooner. Where the slope cannot
    be read, ``b`` is None and a lever may take at most ``LEVER_SHARE`` of the final. The last two
    validations alone undervalued training: on other6 at 30m (6 validation pairs) they read
    0.092 dB per e-fold (0.029 dB between steps 87 and 119), the fit over all four 0.145; priced
    at 0.092, x8 self-ensemble took the final down to step 141 and gained 0.109 dB on the test
    pairs, where the same start trained to step 300 in the previous run scored 0.145 dB above
    it (0.19 per e-fold)."""
    halving = run.journal["halving"]
    arm = next(a for a in run.journal["probes"]["arms"] if a["name"] == halving["winner"])
    scores, rate, step = arm_curve(run, arm)
    seconds = max(run.clock.left() - reserve_after_training(run, 1, False), 0.0)
    value = {"from_step": step, "steps_per_second": round(rate, 4), "final_seconds": round(seconds, 1),
             "slope_db_per_log_step": None if trains(arm) else 0.0}  # untrained: nothing to lose
    slope = log_step_slope(scores)
    if slope is not None:
        value["slope_db_per_log_step"] = round(slope, 4)
        value["points"] = [[s, round(p, 4)] for s, p in scores]
    return value


def arm_curve(run: AutoRun, arm: dict) -> tuple[list[tuple[int, float]], float, int]:
    """An arm's validations (step, PSNR) in step order, its median logged speed in steps a second
    (the probe's where none was logged; 0 for an untrained start) and the step it reached."""
    records = arm_metrics(run.out / "arms" / arm["name"])
    scores = sorted({r["step"]: r["val_psnr"] for r in records if "val_psnr" in r and r["step"] > 0}.items())
    rates = [r["it_per_s"] for r in records if "it_per_s" in r]
    rate = float(np.median(rates)) if rates else 1 / arm["seconds_per_step"] if trains(arm) else 0.0
    return scores, rate, max((r["step"] for r in records), default=0)


def log_step_slope(scores: list[tuple[int, float]]) -> float | None:
    """``b`` of ``psnr = a + b ln(step)`` fitted by least squares to (step, psnr) pairs in step
    order, at least 0; None where their steps span less than ``MIN_STEP_RATIO``."""
    if not scores or scores[-1][0] < MIN_STEP_RATIO * scores[0][0]:
        return None
    steps, psnrs = np.log([s for s, _ in scores]), np.array([p for _, p in scores])
    return max(float(np.polyfit(steps, psnrs, 1)[0]), 0.0)


def training_loss(value: dict, cost: float) -> float:
    """Validation dB the final would lose by training ``cost`` seconds less (``training_value``);
    infinite where the cost takes the whole final, or more than ``LEVER_SHARE`` of it where the
    slope is unknown."""
    seconds, slope = value["final_seconds"], value["slope_db_per_log_step"]
    if cost >= seconds or (slope is None and cost > LEVER_SHARE * seconds):
        return math.inf
    if slope is None or cost <= 0:
        return 0.0
    start, rate = max(value["from_step"], 1), value["steps_per_second"]
    return slope * math.log((start + rate * seconds) / (start + rate * (seconds - cost)))


def measure_levers(run: AutoRun) -> dict:
    """What self-ensemble (of 2, 4 or 8 flips/rotations) and an ensemble with the runner-up buy
    on validation, with the arms' weights after halving and after the refinement the end would
    choose (the two overlap: on known6 x8 gained 0.124 dB on test alone, 0.066 after refinement),
    against what their test-time cost would take from the final's training
    (``training_value``): a lever is kept where its gain less that loss is ``KEEP_DB`` or more;
    of the self-ensembles, the one with the largest such net gain."""
    from upres.inference.ensemble import rgb_input
    from upres.inference.upscaler import Upscaler

    halving = run.journal["halving"]
    if best_weights(run, halving["winner"]) is None:
        why = {"keep": False, "why": "nothing trained yet to measure it on"}
        return {"self_ensemble": why, "ensemble": why}
    value = training_value(run)
    if "points" in value:
        curve = ", ".join(f"{p:.3f} dB at step {s}" for s, p in value["points"])
        run.say(f"  training's price: {curve}: {value['slope_db_per_log_step']:.3f} dB per e-fold "
                "of steps")
    files = val_files(run, run.journal["candidates"]["val_used"])
    measuring = 8 * val_seconds(run, halving["winner"], end=True)
    levers: dict = {"training": value}
    if measuring > 0.1 * run.clock.left():
        levers["self_ensemble"] = {"keep": False, "why": f"not affordable: measuring it takes "
                                   f"~{measuring / 60:.1f} min of {run.clock.left() / 60:.1f} left"}
    elif why := _unaffordable(value, seconds_on_test(run, halving["winner"]), "x2"):
        levers["self_ensemble"] = {"keep": False, "why": why}
    else:
        run.say(f"  self-ensemble: the winner's 8 flips/rotations on {len(files)} validation pairs")
        up = Upscaler(best_weights(run, halving["winner"]),
                      end_options(run, end_dtype(run, [halving["winner"]]), tile=0))
        lrs = [rgb_input(images.read_image(f["lr"]), f["lr"]) for f in files]
        start = time.perf_counter()  # the passes alone: a conversion is reserved apart
        flips = _flips(up, lrs)
        levers["speed"] = _calibrate(run, time.perf_counter() - start, passes=8)
        levers["self_ensemble"] = _measure_self_ensemble(run, flips, files, lrs, value)
    levers["ensemble"] = _measure_ensemble(run, files, value)
    alone = reserve_after_training(run, 1, False)
    afford_together(levers, lambda transforms: training_loss(
        value, reserve_after_training(run, transforms, True) - alone))
    for name in ("self_ensemble", "ensemble"):
        lever = levers[name]
        label = f"x{lever['transforms']}" if "transforms" in lever else lever.get("what", "")
        run.say(f"  {name.replace('_', '-')}{' ' * bool(label)}{label}: " + (
            f"{lever['gain_db']:+.3f} dB for {lever['test_seconds'] / 60:.1f} min of test time, "
            if "gain_db" in lever else "") + ("kept" if lever["keep"] else f"dropped ({lever['why']})"))
    return levers


def _unaffordable(value: dict, test_pass: float, what: str) -> str | None:
    """Why a lever is not worth measuring: its one extra pass over the test set would take the
    whole final (or more than ``LEVER_SHARE`` of it where the slope is unknown), whatever it
    gains. On big6 on a 2-core CPU without native bf16 (test pass 4.3 min) measuring
    self-ensemble took 2.1 minutes of a 20-minute budget to learn that."""
    if not math.isinf(training_loss(value, test_pass)):
        return None
    share = "" if value["slope_db_per_log_step"] is not None or test_pass >= value["final_seconds"] \
        else f"over {LEVER_SHARE:.0%} of "  # no slope to price it with
    return (f"not affordable: {what} adds a pass over the test set (~{test_pass / 60:.1f} min) "
            f"that would take {share}the final's {value['final_seconds'] / 60:.1f} min of training")


def _flips(up, lrs: list[np.ndarray]) -> list[np.ndarray]:
    """Per LR image (float RGB), an ``Upscaler``'s float predictions of its 8 flips/rotations,
    each turned back: (8, H, W, 3)."""
    from upres.inference.engine import dihedral, dihedral_inverse

    return [np.stack([dihedral_inverse(up.upscale_float(np.ascontiguousarray(dihedral(lr, k, (0, 1)))),
                                       k, (0, 1)) for k in range(8)]) for lr in lrs]


def _refiner_for(run: AutoRun, val):
    """The refinement the end would choose on these predictions (None: not kept)."""
    from upres.degradation.fingerprint import Fingerprint
    from upres.degradation.refine import Refiner
    from upres.inference.ensemble import choose_refinement

    fp = Fingerprint.load(run.out / "fingerprint" / "fingerprint.json")
    if len(fp.groups) < 2 or not fp.classifier:
        return None
    refiner = Refiner(fp)
    chosen = choose_refinement(refiner, val, np.ones(1), val_groups(run, len(val.files)))
    return refiner if chosen["gain_db"] >= KEEP_DB and refiner.enabled else None


def _calibrate(run: AutoRun, seconds: float, passes: int) -> dict:
    """The end's inference as timed now (a trained model, minutes after the step-0 timing that
    the estimates come from) against that estimate: the reserve for the end and the levers'
    test-time costs use the slower of the two (known6 at 30m: the test set took 1.3 to 1.6x
    the estimate, and the run ended 4.8% over its budget)."""
    run.end_speed = 1.0
    estimated = passes * val_seconds(run, run.journal["halving"]["winner"], end=True)
    run.end_speed = max(1.0, seconds / max(estimated, 1e-9))
    return {"seconds": round(seconds, 3), "estimated_seconds": round(estimated, 3),
            "ratio": round(run.end_speed, 3)}


def _measure_self_ensemble(run: AutoRun, flips: list[np.ndarray], files: list[dict],
                           lrs: list[np.ndarray], value: dict) -> dict:
    """Self-ensembles of 2, 4 and 8 against the plain winner on validation (one pass of the 8
    flips/rotations, ``_flips``, scores all three), after refinement where the end would keep it."""
    from upres.inference.engine import TRANSFORMS
    from upres.inference.ensemble import Validation

    hrs = [images.read_image(f["hr"]) for f in files]
    targets = [images.gray_to_rgb(images.to_float(hr)) for hr in hrs]
    val = Validation(files, [f[:1] for f in flips], targets, hrs, run.scale, [], lrs)
    refiner = _refiner_for(run, val)
    test_pass = seconds_on_test(run, run.journal["halving"]["winner"])
    options = {n: Validation(files, [flip[list(ks)].mean(0)[None] for flip in flips], targets, hrs,
                             run.scale, [], lrs).fused_psnr(np.ones(1), refiner)
               for n, ks in [(1, (0,)), *TRANSFORMS.items()]}
    choices = {n: _lever(options[n] - options[1], (n - 1) * test_pass, value, f"x{n} flips/rotations")
               for n in TRANSFORMS}
    best = max(choices, key=lambda n: choices[n]["net_db"])
    return {**choices[best], "transforms": best, "refined": refiner is not None,
            "options": {str(n): {k: choices[n][k] for k in ("gain_db", "test_seconds", "net_db")}
                        for n in choices}}


def afford_together(levers: dict, joint_loss: Callable[[int], float]) -> dict:
    """Self-ensemble and the ensemble may each pay alone, yet together the runner-up runs its
    flips too (on minicomp at 15 minutes the pair took all the winner's final training): both
    stay, with the self-ensemble of 2, 4 or 8 whose gain and the ensemble's less the training
    their joint cost takes (``joint_loss(transforms)``) are largest, where that beats the better
    one alone; else the one with the smaller net gain goes. The best self-ensemble alone may not
    be the best beside the ensemble: on other6 at 30 minutes (o30t) x8 alone netted 0.065 dB but
    did not fit the final with the ensemble, which went, and with it the runner-up's 0.27 dB
    lead on the JPEG group."""
    se, ens = levers["self_ensemble"], levers["ensemble"]
    if not (se.get("keep") and ens.get("keep")):
        return levers
    options = {int(n): o for n, o in se.get("options", {}).items()} or {int(se.get("transforms", 8)): se}
    totals = {n: o["gain_db"] + ens["gain_db"] - joint_loss(n) for n, o in options.items()}
    n = max(totals, key=totals.get)
    if totals[n] >= max(se["net_db"], ens["net_db"]):
        if n != se.get("transforms", n):
            o = options[n]
            se.update(transforms=n, gain_db=o["gain_db"], test_seconds=o["test_seconds"],
                      net_db=o["net_db"], training_loss_db=round(o["gain_db"] - o["net_db"], 4),
                      db_per_minute=round(o["gain_db"] / max(o["test_seconds"] / 60, 1e-9), 4),
                      what=f"x{n} flips/rotations",
                      why=f"kept: beside the ensemble x{n} nets the most ({totals[n]:+.3f} dB together)")
        return levers
    weaker = min((se, ens), key=lambda lever: lever["net_db"])
    weaker.update(keep=False, why=f"pays alone, but with the other lever the final would train "
                  f"{joint_loss(n):.3f} dB less; together they gain less than the other alone")
    return levers


def _lever(gain: float, cost: float, value: dict, what: str) -> dict:
    """A lever's validation gain against the training its test-time ``cost`` takes."""
    gain, loss = float(gain), training_loss(value, cost)
    net = gain - loss
    keep = bool(net >= KEEP_DB)
    why = ("kept" if keep else f"gain {gain:+.3f} dB below {KEEP_DB}" if gain < KEEP_DB
           else "too slow for the time left" if math.isinf(loss)
           else f"gain {gain:+.3f} dB, but its time would cost the training {loss:.3f} dB")
    return {"keep": keep, "gain_db": round(gain, 4), "test_seconds": round(cost, 1),
            "training_loss_db": round(loss, 4) if math.isfinite(loss) else None,
            "net_db": round(net, 4) if math.isfinite(net) else -1e9,
            "db_per_minute": round(gain / max(cost / 60, 1e-9), 4), "what": what, "why": why}


def _measure_ensemble(run: AutoRun, files: list[dict], value: dict) -> dict:
    """Soft voting of the winner and the runner-up, weights fitted on validation."""
    from upres.inference.ensemble import Predictor, fit_coefficients

    halving = run.journal["halving"]
    if not halving.get("runner_up"):
        return {"keep": False, "why": "one arm only"}
    extra = seconds_on_test(run, halving["runner_up"])  # the runner-up's pass over the test set
    if why := _unaffordable(value, extra, "the runner-up"):
        return {"keep": False, "why": why}
    options = end_options(run, end_dtype(run, [halving["winner"], halving["runner_up"]]), tile=0)
    predictor = Predictor([best_weights(run, halving["winner"]),
                           best_weights(run, halving["runner_up"])], options)
    val = predictor.validate_files(files, run.scale)
    weights = fit_coefficients(val.preds, val.targets)
    alone = val.model(0)
    refiner = _refiner_for(run, alone)  # what the fusion adds beyond the refinement
    gain = val.fused_psnr(weights, refiner) - alone.fused_psnr(np.ones(1), refiner)
    result = _lever(gain, extra, value, "winner + runner-up")
    return {**result, "weights": [round(float(w), 4) for w in weights], "refined": refiner is not None,
            "runner_up_leads": runner_up_leads(run, val)}


def runner_up_leads(run: AutoRun, val) -> dict[str, float]:
    """The fingerprint groups whose validation pairs the runner-up alone scores higher than the
    winner alone (by ``KEEP_DB``), with that lead in dB: where a start suits a recipe that the
    winner's does not (x4plus saw JPEG in its pretraining, RealSR did not), a specialist of the
    runner-up trains on those groups in the final (``train_specialist``)."""
    from upres.inference.ensemble import to_image
    from upres.scoring import metrics

    groups = val_groups(run, len(val.files))
    leads: dict[int, list[float]] = {}
    for k, group in enumerate(groups or []):
        hr = val.hr[k]
        winner, runner_up = (metrics.psnr(to_image(p, hr), hr, val.border) for p in val.preds[k][:2])
        leads.setdefault(group, []).append(runner_up - winner)
    return {str(g): round(float(np.mean(d)), 4) for g, d in sorted(leads.items()) if np.mean(d) >= KEEP_DB}


def kept_transforms(levers: dict) -> int:
    """The flips/rotations the test set runs: the self-ensemble's where it is kept, else 1."""
    lever = levers["self_ensemble"]
    return int(lever.get("transforms", 8)) if lever.get("keep") else 1
