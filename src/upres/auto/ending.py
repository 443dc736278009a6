"""Phase end: the end's models, ensemble weights per recipe group and refinement, decided on
validation; never below bicubic."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from upres.auto.dataset import training_pairs_of, val_files, val_groups
from upres.auto.journal import AutoRun
from upres.auto.levers import KEEP_DB, kept_transforms
from upres.auto.measure import best_weights, end_dtype, end_options
from upres.auto.probes import bicubic_end
from upres.auto.zeroshot import prefer_zero_shot


def decide_end(run: AutoRun) -> dict:
    """The final models and weights on validation (per fingerprint group where that raises
    validation PSNR by ``KEEP_DB``), and LR-consistency refinement kept for the groups (and
    label confidences) where it raises validation PSNR; weights for the groups validation did not
    see fitted on their training pairs (``fit_unseen_groups``); the zero-shot ensemble of the
    starts instead where it scored higher and fits (``prefer_zero_shot``)."""
    from upres.degradation.fingerprint import Fingerprint
    from upres.degradation.refine import Refiner
    from upres.inference.ensemble import (
        Predictor,
        choose_refinement,
        fit_coefficients,
        fit_group_weights,
    )

    halving, levers = run.journal["halving"], run.journal["levers"]
    arms = [halving["winner"]] + ([halving["runner_up"]] if levers["ensemble"]["keep"] else [])
    specialist = run.journal["final"].get("specialist", {})
    fp = Fingerprint.load(run.out / "fingerprint" / "fingerprint.json")
    if specialist.get("name") and len(arms) == 2 and len(fp.groups) > 1 and fp.classifier:
        arms.append(specialist["name"])
    models = [best_weights(run, arm) for arm in arms]
    dtype = end_dtype(run, arms)
    predictor = Predictor(models, end_options(run, dtype, tile=0))
    val = predictor.validate_files(val_files(run, run.journal["candidates"]["val_used"]), run.scale)
    used, led, label = {}, led_groups(levers), Refiner(fp).label
    if len(models) == 3:
        val, models, used = fit_specialist(val, label, specialist, models, run.say, led)
    three = len(models) == 3  # the specialist on its groups' images, the runner-up elsewhere
    weights = (np.append(fit_coefficients([p[:2] for p in val.preds], val.targets), 0.0) if three
               else fit_coefficients(val.preds, val.targets) if len(models) > 1 else np.ones(1))
    fused, by_group = weights, {"keep": False, "why": "one model"}
    refine = {"keep": False, "why": "the fingerprint has one group"}
    if len(fp.groups) > 1 and fp.classifier:
        if len(models) > 1:
            grouped = (specialist_weights(val, label, weights, specialist["groups"], led=led) if three
                       else fit_group_weights(val, label, weights, priors=led_priors(weights, led)))
            gain = val.fused_psnr(grouped) - val.fused_psnr(weights)
            by_group = {"keep": bool(gain >= KEEP_DB or three), "gain_db": round(gain, 4), "led": led,
                        "weights": {str(g): [round(float(w), 4) for w in c]
                                    for g, c in grouped.by_group.items()}}
            fused = grouped if by_group["keep"] else weights
        if len(models) > 1:
            fused, unseen = fit_unseen_groups(run, predictor, fused, val, label, len(fp.groups))
            by_group.update({"unseen": unseen} if unseen else {})
        refiner = Refiner(fp)
        refine = choose_refinement(refiner, val, fused, val_groups(run, len(val.files)))
        refine["keep"] = refine["gain_db"] >= KEEP_DB and bool(refiner.enabled)
    end = {"models": [str(m) for m in models], "dtype": dtype, "weights": [float(w) for w in weights],
           "weights_by_group": by_group, "val_psnr": round(val.fused_psnr(fused), 4),
           "val_psnr_models": val.psnr, "bicubic_psnr": run.journal["candidates"]["bicubic_psnr"],
           "self_ensemble": kept_transforms(levers) if kept_transforms(levers) > 1 else 0, "refine": refine,
           **({"specialist": used} if used else {})}
    end = prefer_zero_shot(run, end, kept_transforms(levers))
    return floor_at_bicubic(end, bicubic_end(run), run.say)


def untrained_end(run: AutoRun) -> dict:
    """The end where nothing can train or beat bicubic as it is: bicubic, or the zero-shot
    ensemble of the best starts where it fits."""
    return prefer_zero_shot(run, bicubic_end(run), 1)


UNUSED_SHARE = 0.05  # a run that ends with more of its budget unused says why


def unused_budget(data: dict, elapsed: float) -> dict | None:
    """Why a run ended with over ``UNUSED_SHARE`` of its budget unused (None if it did not),
    from what its journal recorded: nothing trained, or the final's time went unused, or the
    end took less than the time reserved for it."""
    budget, phases = data["options"]["budget"], data["phases"]
    unused = budget - elapsed
    if unused <= UNUSED_SHARE * budget:
        return None
    final = phases.get("final", {})
    after = elapsed - final["began"] - final["seconds"] if "seconds" in final else None
    if phases.get("probes", {}).get("bicubic"):
        why = "no start could train or beat bicubic in this budget: the submission is bicubic"
    elif final.get("untrained"):
        why = "the winner is a start that does not train (it predicts as published)"
    elif after is not None and final.get("reserve_seconds", 0) > after + unused / 2:
        why = (f"the end took {after:.0f} s of the {final['reserve_seconds']:.0f} s reserved for it "
               "(its cost is estimated from validation and test-image timings)")
    else:
        why = ("the final stopped before its time: its extensions needed at least 2% of the "
               "budget and 10 steps")
    return {"seconds": round(unused, 1), "share": round(unused / budget, 4), "why": why}


def led_groups(levers: dict) -> list[int]:
    """The fingerprint groups whose validation pairs the runner-up alone scored higher than the
    winner alone (``runner_up_leads``)."""
    return [int(g) for g in levers["ensemble"].get("runner_up_leads", {})]


def led_priors(pooled: np.ndarray, led: list[int]) -> dict[int, np.ndarray]:
    """For each group the runner-up ``led``, the pooled weights with the winner's and the
    runner-up's exchanged: what its group fit is shrunk toward (``specialist_weights``)."""
    return {g: np.array([pooled[1], pooled[0], *pooled[2:]], dtype=np.float64) for g in led}


def specialist_weights(val, label, pooled: np.ndarray, groups: list[int], use: bool = True,
                       led: list[int] = ()):
    """Weights per group over (winner, runner-up, specialist): the specialist in place of the
    runner-up for images labelled as one of its ``groups`` where ``use``, the runner-up
    everywhere else. Each group's fit is shrunk by one pair's worth: a group the runner-up
    ``led`` (the specialist's are such) toward the pooled weights with the winner's and the
    runner-up's (or the specialist's) exchanged, the others toward the pooled weights. The
    pooled fit is the other groups', where the winner leads: on other6 (o30s) it gave the
    winner 0.73 in the JPEG group, the test pairs scored best at 0.1-0.15, and the swap took
    that group from 24.12 to 24.22 dB (known6's from 24.99 to 25.00)."""
    from upres.inference.ensemble import fit_group_weights

    moved = {g: np.array([pooled[1], 0.0, pooled[0]]) for g in groups}
    columns = {g: [0, 2] for g in groups} if use else {}
    return fit_group_weights(val, label, pooled, columns, {**led_priors(pooled, led), **moved} if use
                             else led_priors(pooled, led))


def fit_specialist(val, label, specialist: dict, models: list, say: Callable[[str], None],
                   led: list[int] = ()):
    """The validation and models of the end, with the runner-up's specialist where using it on
    its groups raises validation PSNR by ``KEEP_DB``, else without it; and that measure."""
    from upres.inference.ensemble import Validation, fit_coefficients

    pooled = np.append(fit_coefficients([p[:2] for p in val.preds], val.targets), 0.0)
    groups = specialist["groups"]
    with_it = val.fused_psnr(specialist_weights(val, label, pooled, groups, led=led))
    without = val.fused_psnr(specialist_weights(val, label, pooled, groups, use=False, led=led))
    used = {"groups": specialist["groups"], "gain_db": round(with_it - without, 4),
            "keep": bool(with_it - without >= KEEP_DB)}
    say(f"  {specialist['name']} on its groups: {with_it - without:+.3f} dB on validation: "
        + ("kept" if used["keep"] else "dropped"))
    if used["keep"]:
        return val, models, used
    return Validation(val.files, [p[:2] for p in val.preds], val.targets, val.hr, val.border,
                      val.psnr[:2], val.lr_rgb), models[:2], used


def floor_at_bicubic(end: dict, bicubic: dict, say: Callable[[str], None]) -> dict:
    """The chosen end, or bicubic where it scores better on validation (a start trained too
    briefly to pass it); what was set aside is recorded as ``instead_of``."""
    if end["val_psnr"] >= end["bicubic_psnr"]:
        return end
    say(f"  the end scores {end['val_psnr']:.3f} dB on validation, under bicubic's "
        f"{end['bicubic_psnr']:.3f}: the submission is bicubic")
    return {**bicubic, "instead_of": {"models": end["models"], "val_psnr": end["val_psnr"]}}


def fit_unseen_groups(run: AutoRun, predictor, fused, val, label, groups: int):
    """The fusion, with weights for the groups no validation pair was labelled as (and the
    record of them; None where validation saw every group): fitted on a few of each group's
    training pairs (``training_pairs_of``), or the winner alone where it has none. The
    ensemble's weights are fitted on the groups validation holds and say nothing of the others:
    on held6 at 30m (4 validation pairs of 15, none blurred or JPEG) the pooled fit gave CRAFT
    0.59 against RealSR, and the blur2.0 test pairs scored 25.25 dB where RealSR alone scored
    25.96. The pairs are in-sample (the arms trained on them), which favours the member that
    trained longer: the winner in some runs, the runner-up in others, so the fit is not shrunk
    toward either. Shrinking it toward the winner by one pair's worth cost 0.056 dB on the test
    pairs of a held6 run where CRAFT won and RealSR trained the final (CHANGELOG)."""
    from upres.inference.ensemble import GroupWeights, fit_coefficients

    seen = {label(lr)[0] for lr in val.lrs}
    unseen = sorted(set(range(groups)) - seen)
    if not unseen:
        return fused, None
    grouped = isinstance(fused, GroupWeights)
    pooled = fused.pooled if grouped else np.asarray(fused, dtype=np.float64)
    winner = np.zeros(len(pooled))
    winner[0] = 1.0
    by_group = {g: (fused.by_group.get(g, pooled) if grouped else pooled) for g in sorted(seen)}
    pairs = training_pairs_of(run, unseen)
    for g in unseen:
        if not pairs[g]:
            by_group[g] = winner
            continue
        fitted = predictor.validate_files(pairs[g], run.scale)
        by_group[g] = np.zeros(len(pooled))
        by_group[g][:2] = fit_coefficients([p[:2] for p in fitted.preds], fitted.targets)
    record = {"groups": unseen, "pairs": {str(g): [f["lr"].stem for f in pairs[g]] for g in unseen},
              "weights": {str(g): [round(float(w), 4) for w in by_group[g]] for g in unseen}}
    return GroupWeights(pooled, by_group, label), record


def end_coefficients(end: dict, fingerprint):
    """The fusion's coefficients that ``decide_end`` chose: per group (labelled by the
    fingerprint's blind classifier) where it kept them, else the pooled fit; for the groups
    validation did not see, those fitted on their training pairs (``fit_unseen_groups``)."""
    from upres.degradation.refine import Refiner
    from upres.inference.ensemble import GroupWeights

    pooled = np.asarray(end["weights"])
    by_group = end.get("weights_by_group") or {}
    unseen = by_group.get("unseen")
    if not (by_group.get("keep") or unseen):
        return pooled
    groups = {int(g): np.asarray(w) for g, w in by_group["weights"].items()} if by_group.get("keep") else {}
    if unseen:
        seen = set(range(len(fingerprint.groups))) - set(unseen["groups"])
        groups = {**{g: groups.get(g, pooled) for g in seen},
                  **{int(g): np.asarray(w) for g, w in unseen["weights"].items()}}
    return GroupWeights(pooled, groups, Refiner(fingerprint).label)
