"""Phase candidates: every start (pretrained models, the user's weights, presets from scratch)
timed and scored at step 0 on validation; the reference whose end is measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from upres.auto.clock import END_SHARE, VAL_SHARE
from upres.auto.costs import reserve_after_training
from upres.auto.dataset import val_files
from upres.auto.journal import AutoError, AutoRun
from upres.auto.measure import FP32, TORCH, megapixels_of, score, short_name
from upres.auto.precision import (
    choose_end_backend,
    choose_precision,
    measure_test_costs,
)
from upres.auto.zeroshot import zero_shot_ensemble
from upres.io import images


def _starts(run: AutoRun) -> tuple[list[str], list[str]]:
    """The weights to start from (named models installed, then the user's files), and why any
    asked-for start is missing."""
    from upres.io.pretrained import pretrained_available
    from upres.io.published import PUBLISHED, how_to_get, installed_path

    starts, missing = [], []
    for name in run.options.pretrained:
        if name in PUBLISHED:
            if installed_path(name) is not None:
                starts.append(name)
            else:
                missing.append(f"{name}: not installed ({how_to_get(name)})")
        elif pretrained_available(name):
            starts.append(name)
        else:
            missing.append(f"{name}: not installed (pip install 'upres[pretrained]')")
    for path in run.options.candidates:
        (starts if Path(path).is_file() else missing).append(path)
    return starts, missing + [f"{p}: no such file" for p in run.options.candidates
                              if not Path(p).is_file()]


def score_candidates(run: AutoRun) -> dict:
    """Each start timed on one validation pair, then the reference (``_reference``) scored: its
    speed sets how many pairs a validation can afford (``_val_count``), and the end's precision,
    backend and the test images' costs are measured on it. Each other start is scored at step 0
    unless even the reference's fastest measured end could not run it in ``END_SHARE`` of the
    time left: on big6 without native bf16, scoring x4plus and RealSR (whose test passes took
    longer than the training could get) and timing x4plus on a test image in both backends took
    6.3 of 20 minutes, and no start could train. A preset from scratch is timed only; bicubic
    is scored beside them. The dtypes each family runs correctly in are recorded: the end's
    fast precision applies only to models that support it."""
    from upres.scoring import metrics

    starts, missing = _starts(run)
    files = val_files(run)
    timed = time_starts(run, starts, preset_names(run.options.presets, run.shard.device), files[:1],
                        missing)
    if not timed:
        raise AutoError("no candidate start: " + ("; ".join(missing) or "none asked for")
                        + ". Give --candidate FILE or install the pretrained models")
    reference = _reference(run, timed, files)
    files = files[:_val_count(run, reference, files)]
    scored, precision, backend, first = _score_starts(run, timed, reference, files)
    bicubic = float(np.mean([metrics.psnr(metrics.bicubic_upscale(images.read_image(f["lr"]), run.scale),
                                          images.read_image(f["hr"]), run.scale) for f in files]))
    zero_shot = zero_shot_ensemble(run, scored, files, bicubic)
    costs, backend = measure_test_costs(run, first, files, precision["dtype"], backend)
    order = {e["name"]: i for i, e in enumerate(timed)}
    return {"bicubic_psnr": round(bicubic, 4), "candidates": sorted(scored, key=lambda e: order[e["name"]]),
            "missing": missing, "reference": reference["name"], "val_used": len(files),
            "val_megapixels": round(megapixels_of(files), 4), "precision": precision,
            "end_backend": backend, "test_costs": costs, "zero_shot": zero_shot}


def time_starts(run: AutoRun, starts: list[str], presets: list[str], pair: list[dict],
                missing: list[str]) -> list[dict]:
    """Each start, then each preset, timed on one validation pair; on an accelerator after an
    untimed pass (on an H200 x4plus's first pass took 3.4 s, the CUDA context and cuDNN's
    choice of kernels, where a warm one takes 0.05 s: that had cut validation to 2 pairs).
    Presets are not timed once the budget is spent; ``missing`` says so."""
    timed = []
    for source, preset in [(s, None) for s in starts] + [(None, p) for p in presets]:
        if preset and run.clock.left() <= 0:
            missing.append(f"{preset}: not timed, the budget is spent")
            continue
        entry, model = _candidate(source, preset, run.scale)
        if run.shard.device != "cpu":
            score(model, pair, run.scale, run.shard.device)
        _, seconds = score(model, pair, run.scale, run.shard.device)
        timed.append({**entry, "params": sum(p.numel() for p in model.parameters()),
                      "seconds_per_mp": round(seconds / megapixels_of(pair), 2)})
        run.say(f"  {entry['name']}: {seconds:.1f} s on one validation pair")
    return timed


def _score_starts(run: AutoRun, timed: list[dict], reference: dict, files: list[dict]) -> tuple:
    """The starts scored at step 0, the reference first (with the end's precision and backend
    measured on it), each other one unless it is too slow for the reference's fastest end: too
    slow to train where the reference can, else too slow to predict as it is (then no start
    trains and the best scored one predicts: ``untrained_start``); (records, precision,
    backend, the reference's source and PyTorch seconds per MP or None)."""
    scored, precision, backend, first, share = [], FP32, TORCH, None, END_SHARE
    for entry in sorted(timed, key=lambda e: e is not reference):
        too_slow = None if entry is reference else _end_too_slow(run, entry, files,
                                                                  _fastest(precision, backend), share)
        if too_slow:
            scored.append({**entry, "psnr0": None, "unscored": too_slow})
            run.say(f"  {entry['name']}: not scored, {too_slow}")
            continue
        model = _candidate(entry.get("source"), entry.get("preset"), run.scale)[1]
        psnr0, seconds = score(model, files, run.scale, run.shard.device)
        if entry is reference and "source" in entry:
            precision = choose_precision(model, files, run, psnr0, seconds)
            backend = choose_end_backend(entry["source"], files, run, psnr0, seconds, precision,
                                         run.journal["check"]["test_megapixels"])
            first = entry["source"], seconds / megapixels_of(files) * precision["speed_ratio"]  # PyTorch's
        per_mp = seconds / megapixels_of(files)
        if entry is reference and _end_too_slow(run, {"seconds_per_mp": per_mp}, files,
                                                _fastest(precision, backend)):
            share = 1.0  # the reference cannot train: the others are scored for predicting as they are
        scored.append({**entry, "psnr0": None if entry.get("preset") else round(psnr0, 4),
                       "val_seconds": round(seconds, 2), "seconds_per_mp": round(per_mp, 2)})
        run.say(f"  {entry['name']}: " + (f"from scratch, a validation in {seconds:.1f} s"
                                          if entry.get("preset") else
                                          f"step-0 validation PSNR {psnr0:.3f} dB in {seconds:.1f} s"))
    return scored, precision, backend, first


def _fastest(precision: dict, backend: dict) -> float:
    """The end's fastest measured speed against PyTorch fp32: the fast precision's, or
    OpenVINO's where it scored as PyTorch."""
    return min(precision["speed_ratio"], backend["val_speed_ratio"] if backend.get("exact") else 1.0)


def _candidate(source: str | None, preset: str | None, scale: int) -> tuple[dict, object]:
    """A start's record (name, architecture, the dtypes and backends its family runs in, the
    multiple its LR sides must be: CRAFT's windows take 16) and
    its model: the weights loaded, or a preset built from scratch."""
    from upres.inference.backends import openvino_refusal
    from upres.io.loading import load_weights, model_from_weights
    from upres.models import registry
    from upres.models.registry import describe

    if preset:
        arch = registry.presets()[preset][0]
        model = registry.build_model(arch, registry.hyperparameters(arch, scale, preset))
        entry = {"name": preset, "preset": preset, "arch": arch}
    else:
        weights = load_weights(source)
        model = model_from_weights(weights)
        entry = {"name": short_name(source), "source": str(source), "arch": weights.arch,
                 "hparams": weights.hparams}
    descriptor = describe(model)
    return {**entry, "dtypes": list(descriptor.dtypes), "size_multiple": descriptor.size_multiple,
            "openvino": openvino_refusal(model, descriptor) is None}, model


def _reference(run: AutoRun, timed: list[dict], files: list[dict]) -> dict:
    """The start the end's precision, backend and test costs are measured on: the first start
    (in the order given) whose end in fp32 fits in ``END_SHARE`` of the time left, as timed on
    one pair, else the fastest start. The likeliest to run the end: a start that cannot train
    is not the winner, and the first start's timing does not carry over to another family (on
    big6 OpenVINO ran x4plus at 1.0x its validation speed per MP on a test image, x4plus-anime
    at 1.7x)."""
    with_weights = [e for e in timed if "source" in e] or timed  # presets only where no other
    fits = [e for e in with_weights if not _end_too_slow(run, e, files[:_val_count(run, e, files)], 1.0)]
    reference = fits[0] if fits else min(with_weights, key=lambda e: e["seconds_per_mp"])
    if reference is not timed[0]:
        run.say(f"  measuring the end on {reference['name']}: "
                + ("the first start whose end fits" if fits else "the fastest start"))
    return reference


def _val_count(run: AutoRun, entry: dict, files: list[dict]) -> int:
    """How many validation pairs (2 at least) one validation of a start at its fp32 speed can
    score in ``VAL_SHARE`` of the budget. The reference's count is used: on big6 without native
    bf16 the first start (x4plus, 337 s/MP) had allowed 3 pairs, and neither it nor RealSR
    was scored; the reference (x4plus-anime, 104 s/MP) alone trained."""
    per_pair = entry["seconds_per_mp"] * max(megapixels_of(files) / max(len(files), 1), 1e-9)
    return int(np.clip(VAL_SHARE * run.options.budget / max(per_pair, 1e-9), 2, max(len(files), 1)))


def _end_too_slow(run: AutoRun, entry: dict, files: list[dict], ratio: float,
                  share: float | None = None) -> str | None:
    """Why a start cannot train (or, ``share`` 1, cannot even predict as it is), where a
    validation and a pass over the test set at ``ratio`` of its fp32 speed on validation (the
    fastest end measured; the test images no slower per MP) would take over ``share`` of the
    time left (by default ``END_SHARE``); else None."""
    share = END_SHARE if share is None else share
    megapixels = megapixels_of(files) + run.journal["check"]["test_megapixels"]
    seconds, left = entry["seconds_per_mp"] * ratio * megapixels, run.clock.left()
    if seconds <= share * left:
        return None
    if left <= 0:
        return "the budget is spent"
    return (f"its end (a validation and the test set) would take ~{seconds / 60:.1f} min of the "
            f"{left / 60:.1f} left" + (f" (at most {share:.0%} may go to it)" if share < 1 else ""))


def preset_names(presets: str, device: str) -> list[str]:
    """The published presets to train from scratch: ``auto`` every one on an accelerator and
    none on a CPU (the probes would time each only to drop it), ``none`` none, else the
    named ones on any device (the probes drop those that the budget cannot train)."""
    from difflib import get_close_matches

    from upres.models import registry

    found = registry.presets()
    if presets == "none" or (presets == "auto" and device.split(":")[0] == "cpu"):
        return []
    if presets == "auto":
        return list(found)
    names = [p.strip() for p in presets.split(",") if p.strip()]
    for name in names:
        if name not in found:
            hint = get_close_matches(name, found, n=1)
            raise AutoError(f"--presets: no preset {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint
                                                                  else "") + "; `upres models` lists them")
    return names


def starts_that_leave_training(run: AutoRun) -> tuple[list[dict], list[dict]]:
    """The starts whose own end (a validation and a pass over the test set) takes at most
    ``END_SHARE`` of the time left, and why each other one is not probed: a start whose
    prediction alone would take most of the budget leaves its training too little (a large test
    set on a CPU: 30 images of 512x512 would take x4plus ~12 minutes in bf16 here, 89 s/MP as
    timed on one)."""
    left, fit, dropped = run.clock.left(), [], []
    for cand in run.journal["candidates"]["candidates"]:
        end = reserve_after_training(run, 1, False, starts=[cand])
        if cand.get("unscored"):  # found too slow when the candidates were scored
            dropped.append({"name": cand["name"], "why": f"{cand['unscored']}: not scored or trained"})
        elif end <= END_SHARE * left:
            fit.append(cand)
        else:
            dropped.append({"name": cand["name"], "why": f"its end (a validation and the test set) "
                            f"takes ~{end / 60:.1f} min of the {left / 60:.1f} left (at most "
                            f"{END_SHARE:.0%} may go to it): not trained"})
    return fit, dropped
