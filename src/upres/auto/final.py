"""The final: the winner trains for the time the levers leave, shared with the runner-up where the
ensemble keeps it and its validations say its training buys more; a runner-up's specialist trains
on the recipe groups it leads, where that pays."""

from __future__ import annotations

import json

import numpy as np

from upres.auto.arms import arm_config, train_arm
from upres.auto.clock import LEVER_SHARE, minutes
from upres.auto.costs import (
    conversions,
    reserve_after_training,
    time_on_test_image,
    training_val_seconds,
    val_seconds,
)
from upres.auto.journal import AutoRun
from upres.auto.levers import arm_curve, kept_transforms, log_step_slope
from upres.auto.measure import arm_metrics, arm_psnr, best_weights, trains
from upres.training.checkpoints import latest_step

SPECIALIST_STEPS = 10  # a runner-up's specialist that cannot train this many steps is not trained
# The final schedule's steps over what its measured speed fits: stopped by time at 1/1.1 of its
# length, a cosine is at 2% of its peak; run out of steps early and the time is lost (known6 at
# 30m: the halving round's median speed was 13% under the final's, 2.5 minutes went unused)
FINAL_OVERSHOOT = 1.1
# ... and where no halving round logged a speed (one arm), only the probe's 5 timed steps: on
# big6 without native bf16 its 2.12 s a step planned 355 steps that were done in 637 of 695 s.
# Stopped by time at 1/1.25 of its length, a cosine is at 10% of its peak
PROBE_OVERSHOOT = 1.25
# A final whose steps ran out with time left trains on (``fill_budget``) while at least this
# share of the budget is left, at most FILLS times: CRAFT's final at 40m planned 647 steps from
# a probe timed in a load spike (1.94 s a step), ran them at ~0.65 s and left 14 minutes
FILL_SHARE = 0.02
FILLS = 3


def run_final(run: AutoRun) -> None:
    """The winner trains on for the time left after the reserve for the end, its cosine
    schedule stretched to end with that time (from its measured speed, ``FINAL_OVERSHOOT``
    long so that the time, not the steps, ends it; ``PROBE_OVERSHOOT`` from the probe's)."""
    record = run.journal.data["phases"].setdefault("final", {"began": round(run.clock.elapsed(), 2)})
    if record.get("done"):
        return
    halving, levers = run.journal["halving"], run.journal["levers"]
    arm = next(a for a in run.journal["probes"]["arms"] if a["name"] == halving["winner"])
    if not trains(arm):
        record.update(done=True, untrained=True, psnr=arm["psnr0"], seconds=0.0)
        run.journal.save(run.clock)
        return
    if run.shard.main and "test_seconds_per_mp" not in record:
        per_mp = time_on_test_image(run, arm["name"])
        if per_mp is not None:
            record["test_seconds_per_mp"] = round(per_mp, 3)
    if record.get("test_seconds_per_mp"):
        run.test_per_mp[arm["name"]] = record["test_seconds_per_mp"]
    reserve = reserve_after_training(run, kept_transforms(levers), levers["ensemble"]["keep"])
    if "specialist" not in record:  # planned, then trained: a resumed run trains what is left
        record["specialist"] = run.shard.broadcast(plan_specialist(run, run.clock.left() - reserve))
        run.journal.save(run.clock)
    if record["specialist"].get("name") and "psnr" not in record["specialist"]:
        record["specialist"].update(train_specialist(run, record["specialist"]))
        run.journal.save(run.clock)
    if "runner_up" not in record:
        # rank 0's plan on every rank, as the winner's below
        record["runner_up"] = run.shard.broadcast(plan_runner_up(run, arm, run.clock.left() - reserve))
        run.journal.save(run.clock)
    if record["runner_up"].get("seconds") and "psnr" not in record["runner_up"]:
        record["runner_up"].update(train_runner_up(run, record["runner_up"]))
        run.journal.save(run.clock)
    seconds = run.clock.left() - reserve
    records = arm_metrics(run.out / "arms" / arm["name"])
    rates = [r["it_per_s"] for r in records if "it_per_s" in r]
    rate = float(np.median(rates)) if rates else 1 / arm["seconds_per_step"]
    overshoot = FINAL_OVERSHOOT if rates else PROBE_OVERSHOOT
    step = max((r["step"] for r in records), default=0)
    iterations = step + int(overshoot * max(seconds - training_val_seconds(run, arm), 0) * rate)
    # rank 0's plan on every rank: each rank's clock started apart, and DDP ranks that plan
    # different step counts wait on each other for ever
    seconds, iterations = run.shard.broadcast((seconds, iterations))
    record.update(planned_seconds=round(seconds, 1), reserve_seconds=round(reserve, 1),
                  from_step=step, iterations=iterations, rate_from="training" if rates else "probe")
    if iterations > step + 1:
        run.say(f"[{minutes(run.clock.elapsed())}] final: {arm['name']} trains "
                f"{seconds / 60:.1f} min more, to step {iterations}")
        train_arm(run, arm, seconds, iterations)
        fill_budget(run, arm, reserve, record)
    psnr, reached = arm_psnr(run, arm["name"]) if run.shard.main else (None, None)
    record.update(done=True, psnr=None if psnr is None else round(psnr, 4), reached_step=reached,
                  seconds=round(run.clock.elapsed() - record["began"], 2))
    run.journal.save(run.clock)


def plan_runner_up(run: AutoRun, winner: dict, seconds: float) -> dict:
    """The runner-up's share of the final's ``seconds`` where the ensemble keeps it
    (``share_final`` over both members' validations, weighted by the ensemble's weights), else
    none and why. The winner's validation may have levelled off where the runner-up's still
    rises: on known6 at 30m SAFMN's peaked at step 137 and its 8.5-minute final to step 1,225
    added nothing, while the GAN-trained start it beat rose all its final."""
    halving, ensemble = run.journal["halving"], run.journal["levers"]["ensemble"]
    other = next((a for a in run.journal["probes"]["arms"] if a["name"] == halving.get("runner_up")), None)
    why = ("no ensemble with the runner-up" if other is None or not ensemble.get("keep")
           else "the runner-up does not train" if not trains(other) else "")
    if why:
        return {"why": why}
    members = [_curve(run, winner, ensemble["weights"][0]), _curve(run, other, ensemble["weights"][1])]
    if any(m["slope"] is None for m in members):
        return {"name": other["name"], "why": "a member's validations span too few steps for a slope"}
    share = share_final(seconds, members)[1]
    plan = {"name": other["name"], "curves": members, "seconds": round(share, 1)}
    if share * members[1]["rate"] < SPECIALIST_STEPS:
        return {**plan, "seconds": 0.0, "why": "its validations buy less from training than the winner's"}
    return plan


def _curve(run: AutoRun, arm: dict, weight: float) -> dict:
    """An arm's fitted validation slope (dB per e-fold of steps), step, speed and ensemble weight."""
    scores, rate, step = arm_curve(run, arm)
    slope = log_step_slope(scores)
    return {"slope": None if slope is None else round(slope, 4), "weight": round(max(float(weight), 0.0), 4),
            "step": step, "rate": round(rate, 4)}


def share_final(seconds: float, members: list[dict]) -> list[float]:
    """The seconds of each member (``slope`` b, ``weight`` w, ``step`` s, steps a second ``rate`` r)
    that maximize the weighted gain their fitted curves predict, sum of w b ln(1 + r t / s) with
    the t summing to ``seconds``: each t = w b K - s / r for the K that fills the time (water
    filling), members whose t would be negative given none. No slope anywhere: all to the first."""
    active = [i for i, m in enumerate(members) if m["weight"] * m["slope"] > 0]
    t = [0.0] * len(members)
    while active:
        lead = [max(members[i]["step"], 1) / members[i]["rate"] for i in active]
        k = (seconds + sum(lead)) / sum(members[i]["weight"] * members[i]["slope"] for i in active)
        t = [0.0] * len(members)
        for i, s in zip(active, lead):
            t[i] = members[i]["weight"] * members[i]["slope"] * k - s
        if min(t[i] for i in active) >= 0:
            return t
        active = [i for i in active if t[i] > 0]
    return [seconds] + [0.0] * (len(members) - 1)


def train_runner_up(run: AutoRun, plan: dict) -> dict:
    """The runner-up trains its share (what is left of it, resumed), its cosine stretched to end
    with the share (as the winner's)."""
    arm = next(a for a in run.journal["probes"]["arms"] if a["name"] == plan["name"])
    curve = plan["curves"][1]
    steps = int(FINAL_OVERSHOOT * max(plan["seconds"] - training_val_seconds(run, arm), 0) * curve["rate"])
    iterations = run.shard.broadcast(curve["step"] + steps)
    seconds = run.shard.broadcast(share_left(run, arm["name"], plan["seconds"], curve["step"], curve["rate"]))
    run.say(f"[{minutes(run.clock.elapsed())}] final: the runner-up {arm['name']} trains "
            f"{seconds / 60:.1f} min, to step {iterations}")
    train_arm(run, arm, seconds, iterations)
    psnr, reached = arm_psnr(run, arm["name"]) if run.shard.main else (None, None)
    return {"iterations": iterations, "psnr": None if psnr is None else round(psnr, 4),
            "reached_step": reached}


def share_left(run: AutoRun, name: str, seconds: float, from_step: int, rate: float) -> float:
    """The seconds of an arm's planned share still to train: all of them, or where a killed run
    resumes it, those less the steps its latest checkpoint holds past ``from_step``, at the
    planned ``rate`` (a resumed training is given its whole ``train.time_budget`` again, so the
    runner-up killed in its share retrained all of it)."""
    done = max(latest_step(run.out / "arms" / name) - from_step, 0) / rate if rate > 0 else 0.0
    return max(seconds - done, 0.0)


def fill_budget(run: AutoRun, arm: dict, reserve: float, record: dict) -> None:
    """Train on while the final's steps ran out before its time: the steps of the time left at
    the speed its latest steps logged (the plan's speed came from earlier, maybe slower,
    timings), so that the time, not a step count, ends the training. Each extension lengthens
    the cosine: it resumes at (1 + cos(pi t / T')) / 2 of its peak and decays again."""
    for _ in range(FILLS):
        seconds = run.clock.left() - reserve
        records = arm_metrics(run.out / "arms" / arm["name"])
        rates = [r["it_per_s"] for r in records if "it_per_s" in r][-3:]
        step = max((r["step"] for r in records), default=0)
        steps = int(FINAL_OVERSHOOT * max(seconds - training_val_seconds(run, arm), 0)
                    * float(np.median(rates))) if rates else 0
        seconds, step, steps = run.shard.broadcast((seconds, step, steps))  # rank 0's decides
        if seconds < FILL_SHARE * run.clock.budget or steps < SPECIALIST_STEPS:
            return
        iterations = step + steps
        record.setdefault("extended", []).append(
            {"from_step": step, "iterations": iterations, "seconds": round(seconds, 1)})
        run.say(f"[{minutes(run.clock.elapsed())}] final: {arm['name']} reached its steps with "
                f"{seconds / 60:.1f} min left; trains on to step {iterations}")
        train_arm(run, arm, seconds, iterations)


def specialist_plan(run: AutoRun) -> tuple[dict | None, list[int], float, str]:
    """The runner-up's arm, the groups it leads on validation (``runner_up_leads``) and their
    share of the training pairs (at most ``LEVER_SHARE``): what a specialist trains on, and for
    which share of the final; else None and why not."""
    halving, ensemble = run.journal["halving"], run.journal["levers"]["ensemble"]
    arm = next((a for a in run.journal["probes"]["arms"] if a["name"] == halving.get("runner_up")), None)
    groups = [int(g) for g in ensemble.get("runner_up_leads", {})]
    why = ("no ensemble with the runner-up" if arm is None or not ensemble.get("keep")
           else "the runner-up led no recipe group on validation" if not groups
           else "the runner-up does not train" if not trains(arm)
           else "DATA/val has no recipe groups" if run.journal["split"]["val"] is None
           else "no blind classifier sends test images to groups"
           if run.journal["fingerprint"].get("classifier_accuracy") is None else "")
    if why:
        return None, [], 0.0, why
    held = set(run.journal["split"]["val"])
    train = [g for name, g in run.journal["fingerprint"]["group_of"].items() if name not in held]
    return arm, groups, min(sum(g in groups for g in train) / max(len(train), 1), LEVER_SHARE), ""


def specialist_name(arm: str) -> str:
    return f"{arm}-specialist"


def plan_specialist(run: AutoRun, seconds: float) -> dict:
    """A copy of the runner-up to train on the groups it leads, for their share of the final's
    ``seconds`` (less its pass over validation and its conversion at the end), at the runner-up's
    crop, batch and rate (``train_specialist``); else why not. On other6 (o30) 80 s of the x4plus
    arm on the JPEG group's 8 training pairs raised that group's test PSNR by 0.081 dB, 80 s on
    all 52 pairs by 0.024, and RealSR's winner gained 0.143 from a JPEG specialist of its own
    but stayed 0.36 dB under x4plus's. ``decide_end`` uses it on those groups' images where
    validation rises."""
    arm, groups, share, why = specialist_plan(run)
    if arm is None:
        return {"groups": [], "why": why}
    cost = val_seconds(run, arm["name"], end=True) + conversions(run, [arm["name"]], None)
    budget = share * seconds - cost - training_val_seconds(run, arm)
    rates = [r["it_per_s"] for r in arm_metrics(run.out / "arms" / arm["name"]) if "it_per_s" in r]
    rate = float(np.median(rates)) if rates else 1 / arm["seconds_per_step"]
    steps = int(FINAL_OVERSHOOT * budget * rate)
    plan = {"groups": groups, "of": arm["name"], "share": round(share, 4),
            "planned_seconds": round(budget, 1), "iterations": steps, "rate": round(rate, 4)}
    if steps < SPECIALIST_STEPS:
        return {**plan, "groups": [], "why": f"{steps} steps in its share (fewer than {SPECIALIST_STEPS})"}
    return {**plan, "name": specialist_name(arm["name"])}


def train_specialist(run: AutoRun, plan: dict) -> dict:
    """The specialist trains its planned seconds (what is left of them, resumed) from the
    runner-up's best weights on its groups' pairs: its step reached and validation PSNR."""
    from upres.training.loop import train

    arm = next(a for a in run.journal["probes"]["arms"] if a["name"] == plan["of"])
    name, groups = plan["name"], plan["groups"]
    seconds = run.shard.broadcast(share_left(run, name, plan["planned_seconds"], 0, plan["rate"]))
    run.say(f"[{minutes(run.clock.elapsed())}] final: {name} trains {seconds / 60:.1f} min on "
            f"group{'s' * (len(groups) > 1)} {', '.join(map(str, groups))}, where {arm['name']} led")
    fingerprint = run.out / "fingerprint" / "fingerprint.json"
    cfg = arm_config(run, {**arm, "name": name}, plan["iterations"], seconds, [
        f"init.source={json.dumps(str(best_weights(run, arm['name'])))}",
        f"data.fingerprint={json.dumps(str(fingerprint))}", f"data.groups={json.dumps(groups)}"])
    train(cfg, run.out / "arms" / name, resume="auto", command=["upres", "auto", name],
          progress=run.options.progress)
    psnr, reached = arm_psnr(run, name) if run.shard.main else (None, None)
    return {"psnr": None if psnr is None else round(psnr, 4), "reached_step": reached}
