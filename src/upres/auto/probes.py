"""Phase probes: each arm's learning-rate range test and step times at a few sizes, sized to
reach MIN_STEPS; where no arm can train, the end is bicubic or an untrained start."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from upres.auto.arms import arm_config, arm_variants, param_names
from upres.auto.clock import END_SHARE, HALVING_SHARE, LEVER_SHARE, PROBE_SHARE
from upres.auto.costs import reserve_after_training
from upres.auto.journal import AutoRun
from upres.auto.measure import BICUBIC, FP32
from upres.auto.starts import starts_that_leave_training
from upres.io import images

MIN_STEPS = 800  # steps an arm's schedule should get (else smaller crops or batches): at the same
# HR pixels, RealSR on other6 scored 23.733 / 23.788 / 23.819 dB in 200 x 192^2 x 4, 448 x 128^2 x 4
# and 800 x 96^2 x 4 steps (benchmarks/bench_steps.py; 1.22x the time for the last)
FEWEST_STEPS = 50  # a fine-tune that cannot get this many steps is not an arm
ROUND_STEPS = 100  # a halving round holding fewer steps per arm cannot tell two levers apart
RANGE_STEPS = 24  # a range test of fewer steps is too noisy to trust
# and one whose rate falls under a tenth of the usual one is distrusted too: 40 steps with x4plus
# on known6 put the smoothed minimum at the first step (3.3e-7, 1e-5 after the clip; 2e-4 works)
DEFAULT_LR = {False: 2e-4, True: 5e-4}  # fine-tuning (BasicSR's), from scratch: if not measured
LAYOUT_GAIN = 0.05  # channels_last is taken where a step is at least this share faster
# Sizes timed beyond the probe's: a fit from 64 x 4 and 96 x 8 put x4plus at 192 x 8 at 2.3 s a
# step on minicomp, where it ran at 4 to 5 s (the cost per pixel grows with the crop), so a size
# more than 1.5x the pixels of any timed one is timed before it is planned on
SIZE_TIMINGS = 3
SCRATCH_MIN_STEPS = 20_000  # a preset from scratch is a candidate only if it gets this many
# A preset from scratch whose first timing (crop 64 x batch 4, the smallest) gives it under
# 1/SCRATCH_SLACK of those steps is dropped untimed in other layouts and sizes: on an H200 with a
# 4-minute budget the probes took 110 s, most on the layouts and sizes of 24 presets that they
# then dropped (160 to 2,100 steps each)
SCRATCH_SLACK = 2.0


def probe_arms(run: AutoRun) -> dict:
    """Each arm's learning rate (range test), step time and crop/batch for the time it can get;
    arms that cannot train enough steps are dropped with the figures. Tail first is an arm only
    where the halving can judge it (``_tail_first_unjudged``; on minicomp it trailed by 0.08 dB
    after 10 minutes)."""
    cands, dropped = starts_that_leave_training(run)
    seconds = run.clock.left() - reserve_after_training(run, 1, False, starts=cands) if cands else 0.0
    arms = []
    probe_steps = int(min(PROBE_SHARE * seconds / max(len(cands), 1) / 3, 40))
    min_side = min(min(images.header_size(p.hr)) for p in run.pairs)
    rounds_of = HALVING_SHARE * seconds / max(2 * len(cands), 1)  # if every start has two arms
    for cand in cands:
        names = param_names(cand)
        variants = arm_variants(cand, names)
        known = None
        for variant in variants:
            arm = _probe(run, cand, variant, probe_steps, seconds, min_side, len(cands), known)
            known = arm  # the full fine-tune's rate and layout serve tail first too
            if variant["variant"] == "full" and len(variants) > 1:
                why = _tail_first_unjudged(arm, rounds_of, HALVING_SHARE * seconds / 2,
                                           variants[1]["unfreeze"][0]["at"])
                if why:
                    variants[1:] = []
                    dropped.append({"name": f"{cand['name']}-tail-first", "why": why})
            need = SCRATCH_MIN_STEPS if variant["variant"] == "scratch" else FEWEST_STEPS
            if arm["steps_planned"] < need:
                dropped.append({"name": arm["name"], "why": f"{arm['steps_planned']} steps in "
                                f"the time it would get ({need} needed)"})
                continue
            arms.append(arm)
            run.say(f"  {arm['name']}: lr {arm['lr']:.2e}, crop {arm['crop']} x batch "
                    f"{arm['batch']}, {arm['seconds_per_step']:.2f} s/step, ~{arm['steps_planned']} "
                    "steps if it wins")
    if not arms:
        return untrained_start(run, dropped)
    return {"arms": arms, "dropped": dropped, "training_seconds": round(seconds, 1),
            "probe_steps": probe_steps}


def _tail_first_unjudged(full: dict, round_seconds: float, finalist_seconds: float,
                        unfreeze_at: float) -> str:
    """Why the halving could not tell tail first from the full fine-tune, else "": rounds too
    short, or rounds that end (a finalist trains at most half the halving's time) before tail
    first unfreezes, so that they would compare the frozen tail alone: on other6 at 30 minutes
    (o30k) each start's tail-first arm trailed its full one at 47 steps, and RealSR's by 0.095 dB
    at 180, all still frozen (they unfroze at 442 of 884); minicomp's tail only trailed the full
    cosine fine-tune by 0.11 (levers-cpu)."""
    per_step = full["seconds_per_step"]
    if round_seconds / per_step < ROUND_STEPS:
        return (f"a halving round of {round_seconds:.0f} s holds {round_seconds / per_step:.0f} "
                f"steps ({ROUND_STEPS} needed to compare it)")
    reach, unfreeze = int(finalist_seconds / per_step), int(unfreeze_at * full["steps_planned"])
    if reach < unfreeze:
        return (f"the halving ends by step {reach}, before tail first unfreezes (step {unfreeze}): "
                "it would compare the frozen tail alone")
    return ""


def untrained_start(run: AutoRun, dropped: list[dict]) -> dict:
    """Where no arm can train in the budget, the submission is the best start as it is: the
    highest step-0 validation PSNR among the starts whose end fits in the time left, if it beats
    bicubic (on minicomp none does: Real-ESRGAN's starts sharpen for the eye, not for PSNR).
    Otherwise the submission is bicubic, and the record says what budget would train a start."""
    left = run.clock.left()
    scored = [c for c in run.journal["candidates"]["candidates"] if c.get("psnr0") is not None]
    ends = {c["name"]: reserve_after_training(run, 1, False, starts=[c]) for c in scored}
    bicubic = run.journal["candidates"]["bicubic_psnr"]
    fitting = [c for c in scored if ends[c["name"]] <= left and c["psnr0"] > bicubic]
    why = "no arm can train in this budget" + (
        " (" + "; ".join(f"{d['name']}: {d['why']}" for d in dropped) + ")" if dropped else "")
    short = "no arm can train in this budget (see dropped)"
    if not fitting:
        fastest = min(scored, key=lambda c: ends[c["name"]], default=None)
        need = "" if fastest is None else (
            f"; --budget {math.ceil((run.clock.elapsed() + ends[fastest['name']] / END_SHARE) / 60) + 1}m "
            f"would give {fastest['name']} (its end ~{ends[fastest['name']] / 60:.1f} min) some training")
        reason = (f"{why}, and no start as it is fits in the {max(left, 0) / 60:.1f} min left and "
                  f"beats bicubic ({bicubic:.3f} dB on validation){need}")
        run.say(f"  {reason}: the submission is bicubic (--resume with a larger --budget keeps "
                "what is measured and probes again)")
        return {"arms": [], "dropped": dropped, "training_seconds": 0.0, "probe_steps": 0,
                "bicubic": reason, "budget": run.clock.budget}
    best = max(fitting, key=lambda c: c["psnr0"])
    run.say(f"  {why}: {best['name']} predicts as it is (step-0 validation PSNR {best['psnr0']:.3f} dB, "
            f"bicubic {bicubic:.3f})")
    arm = {**best, "name": f"{best['name']}-untrained", "variant": "untrained", "steps_planned": 0}
    return {"arms": [arm], "dropped": dropped, "training_seconds": 0.0, "probe_steps": 0,
            "untrained": short}


def bicubic_end(run: AutoRun) -> dict:
    """The end where nothing beats bicubic in the time: bicubic itself, its validation PSNR."""
    bicubic = run.journal["candidates"]["bicubic_psnr"]
    return {"models": [BICUBIC], "dtype": FP32["dtype"], "weights": [1.0],
            "weights_by_group": {"keep": False, "why": "bicubic"}, "val_psnr": bicubic,
            "val_psnr_models": [bicubic], "bicubic_psnr": bicubic, "self_ensemble": 0,
            "refine": {"keep": False, "why": "bicubic"}}


def _probe(run: AutoRun, cand: dict, variant: dict, steps: int, seconds: float, min_side: int,
           starts: int, known: dict | None) -> dict:
    """One arm measured: a range test of ``steps`` (its rate and its step time; with a
    ``known`` arm of the same start, or fewer than ``RANGE_STEPS`` affordable, a few steps at a
    known rate time it), the faster memory layout, then its crop, batch and schedule for the
    time it would get if it won; a preset from scratch too slow at the first timing is left
    there (``SCRATCH_SLACK``)."""
    from upres.training.lr_find import range_test

    scratch = variant["variant"] == "scratch"
    arm = {**cand, **variant, "name": f"{cand['name']}-{variant['variant']}",
           "crop": -(-64 // crop_step(cand, run.scale)) * crop_step(cand, run.scale),
           "batch": 4, "lr": DEFAULT_LR[scratch], "ema": 0.99, "checkpoint_every": 50}
    if known:  # the layout the same start measured faster
        arm["channels_last"], arm["layout"] = known["channels_last"], known["layout"]
    folder = run.out / "probes" / arm["name"]
    lr = known["lr"] if known else None
    if lr is None and steps >= RANGE_STEPS:
        low, high = (1e-5, 1e-2) if scratch else (1e-6, 3e-3)
        test = range_test(arm_config(run, arm, steps), folder, steps, low, high, progress=False)
        arm["lr"], arm["range_test"] = range_rate(test.suggestion, scratch)
        arm["range_test"]["steps"] = len(test.lrs)
    else:
        arm["lr"] = lr or arm["lr"]
        rate = arm["lr"]
        test = range_test(arm_config(run, arm, 5), folder, 5, rate, rate * 1.0001, progress=False)
        arm["range_test"] = {"skipped": "the full fine-tune's rate" if lr else
                             f"{steps} steps affordable ({RANGE_STEPS} needed): the usual rate"}
    per_step, share = test.seconds_per_step, won_seconds(seconds, starts)
    if scratch and SCRATCH_SLACK * share / per_step < SCRATCH_MIN_STEPS:
        # at its smallest crop and batch: no layout or size can give it the steps
        return {**arm, "steps_planned": int(share / per_step), "seconds_per_step": round(per_step, 4)}
    if not known:
        arm.update(_layout(run, arm, folder, per_step))
        per_step = arm["layout"]["channels_last"] if arm["channels_last"] else per_step
    probe_pixels = arm["batch"] * arm["crop"] ** 2
    if known:  # the same start's fitted costs, scaled by how this arm's probe step compares
        ratio = per_step / known["timing"]["probe_seconds"]
        model = (known["timing"]["overhead"] * ratio, known["timing"]["per_pixel"] * ratio)
        timed = list(known["timing"]["timed"])
    else:
        timed = [[arm["crop"], arm["batch"], round(per_step, 4)]]
        model = _step_model([(probe_pixels, per_step)])
        for attempt in range(SIZE_TIMINGS):  # time the size it would train at, until it is timed
            guess = _sized(arm, model, share, min_side, run.scale)
            pixels = guess["batch"] * guess["crop"] ** 2
            if pixels <= 1.5 * max(b * c ** 2 for c, b, _ in timed):  # within what was timed
                break
            run.say(f"  {arm['name']}: timing crop {guess['crop']} x batch {guess['batch']}")
            test = range_test(arm_config(run, {**arm, **guess}, 5), folder / f"sized{attempt}", 5,
                              arm["lr"], arm["lr"] * 1.0001, progress=False)
            timed.append([guess["crop"], guess["batch"], round(test.seconds_per_step, 4)])
            largest = sorted(timed, key=lambda t: t[0] ** 2 * t[1])[-2:]  # the slope near the top
            model = _step_model([(b * c ** 2, t) for c, b, t in largest])
    arm.update(_sized(arm, model, share, min_side, run.scale))
    arm["timing"] = {"probe_seconds": per_step, "overhead": model[0], "per_pixel": model[1],
                     "timed": timed}
    return arm


def won_seconds(seconds: float, starts: int) -> float:
    """The training time an arm gets if it wins: its share of halving and the final, less what
    the runner-up's specialist may take of the final (``LEVER_SHARE``). Without that, on other6
    at 30m the winner trained 676 and 726 s of the 1033 and 1081 s planned, and at 1081 s the
    plan chose crop 128 for 322 steps, of which it reached 176 (at 1033 s: crop 96, 285)."""
    return seconds * ((1 - HALVING_SHARE) * (1 - LEVER_SHARE) + HALVING_SHARE / max(starts, 1))


def range_rate(suggestion: float, scratch: bool) -> tuple[float, dict]:
    """The rate a range test's suggestion gives (clipped), and its record; under a tenth of the
    usual rate the loss rose from the test's first steps, and the usual rate stays."""
    record = {"suggestion": suggestion}
    if suggestion < DEFAULT_LR[scratch] / 10:
        record["distrusted"] = f"{suggestion:.1e} is under a tenth of {DEFAULT_LR[scratch]:.0e}"
        return DEFAULT_LR[scratch], record
    return float(np.clip(suggestion, 1e-5, 2e-3 if scratch else 1e-3)), record


def _layout(run: AutoRun, arm: dict, folder: Path, nchw_seconds: float) -> dict:
    """channels_last against the default layout, timed over a few steps at the arm's rate: kept
    where a step is ``LAYOUT_GAIN`` faster (x4plus in bf16 on a CPU with AMX: 0.48 against
    0.59 s a step at crop 64 x batch 8)."""
    from upres.training.lr_find import range_test

    rate = arm["lr"]
    test = range_test(arm_config(run, {**arm, "channels_last": True}, 5), folder / "channels_last",
                      5, rate, rate * 1.0001, progress=False)
    faster = test.seconds_per_step < (1 - LAYOUT_GAIN) * nchw_seconds
    # to the microsecond: at 3 decimals a 16 ms step on tiny data no longer shows why it was chosen
    return {"channels_last": bool(faster),
            "layout": {"nchw": round(nchw_seconds, 6), "channels_last": round(test.seconds_per_step, 6)}}


def _step_model(timed: list[tuple[int, float]]) -> tuple[float, float]:
    """Seconds a training step takes as ``overhead + per_pixel * pixels`` (HR pixels in the
    batch), fitted to steps timed at different sizes. The overhead (optimizer and EMA over every
    weight, loading) is why pixels alone mislead: x4plus in bf16 on a CPU with AMX took 0.82 s a
    step at crop 64 x batch 4 and 1.86 s, not 3.7, at 96 x 8. One timing: no overhead."""
    pixels = np.array([p for p, _ in timed], dtype=float)
    seconds = np.array([t for _, t in timed], dtype=float)
    if len(set(pixels)) < 2:
        return 0.0, float(seconds.mean() / pixels.mean())
    per_pixel, overhead = np.polyfit(pixels, seconds, 1)
    if per_pixel <= 0 or overhead < 0:  # noise, or a cost per pixel growing with the size:
        # keep the costlier linear reading
        return 0.0, float(np.max(seconds / pixels))
    return float(overhead), float(per_pixel)


def crop_step(arm: dict, scale: int) -> int:
    """HR crops an arm may train at are multiples of this: LR sides of whole 4-pixel steps and
    of its family's size multiple (CRAFT's 16: a crop of 96 is refused by training's preflight,
    which ended a 30-minute known6 run in its first halving round)."""
    return scale * math.lcm(4, arm.get("size_multiple", 1))


def _sized(arm: dict, model: tuple[float, float], seconds: float, min_side: int, scale: int) -> dict:
    """Crop and batch from the step-time ``model`` (``_step_model``): the most HR pixels per step
    that still give ``MIN_STEPS`` in the arm's time, crops of at least 64 (of ``crop_step``'s
    multiples) that fit the smallest image, batches of at least 4; the EMA and checkpoint
    interval follow the steps."""
    overhead, per_pixel = model
    pixels = (seconds / MIN_STEPS - overhead) / per_pixel
    unit = crop_step(arm, scale)
    least = min(max(64, unit), min_side // unit * unit) or unit  # crops of 64, batches of 4
    options = [(c, b) for c in (32, 48, 64, 96, 128, 192, 256) for b in (4, 8, 16, 32)
               if least <= c <= min_side and c % unit == 0] or [(least, 4)]
    fitting = [o for o in options if o[0] ** 2 * o[1] <= pixels] or [min(options)]
    crop, batch = max(fitting, key=lambda o: (o[0] ** 2 * o[1], o[1] >= 4, o[0]))
    step = overhead + per_pixel * crop ** 2 * batch
    steps = int(seconds / step)
    return {"crop": crop, "batch": batch, "seconds_per_step": round(step, 3),
            "steps_planned": steps, "ema": 0.99 if steps < 2000 else 0.999,
            "checkpoint_every": max(5, int(60 / step))}
