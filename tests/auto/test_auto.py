"""``upres auto`` with budgets of seconds on tiny data: a submission and its decisions within
the budget, a bad start dropped by validation, and a resume after SIGKILL."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import free_port, hr_folder, make_recipe_set, nearest_rrdbnet, patch_in, tiny_rrdbnet
from upres.auto import arms as auto_arms
from upres.auto import dataset as auto_dataset
from upres.auto import driver as auto_driver
from upres.auto import ending as auto_ending
from upres.auto import final as auto_final
from upres.auto import halving as auto_halving
from upres.auto import levers as auto_levers
from upres.auto import measure as auto_measure
from upres.auto import precision as auto_precision
from upres.auto import probes as auto_probes
from upres.auto import starts as auto_starts
from upres.auto.arms import arm_config, head_patterns
from upres.auto.clock import HALVING_SHARE, LEVER_SHARE, Clock
from upres.auto.costs import (
    _per_mp,
    reserve_after_training,
    seconds_on_test,
    time_on_test_image,
    training_val_seconds,
    val_dtype,
)
from upres.auto.dataset import split_validation, val_files, val_groups
from upres.auto.driver import run_auto
from upres.auto.ending import (
    end_coefficients,
    fit_specialist,
    fit_unseen_groups,
    floor_at_bicubic,
    led_priors,
    specialist_weights,
)
from upres.auto.final import FINAL_OVERSHOOT, PROBE_OVERSHOOT, SPECIALIST_STEPS, run_final
from upres.auto.journal import AutoError, AutoOptions, Journal
from upres.auto.levers import (
    KEEP_DB,
    MIN_STEP_RATIO,
    _calibrate,
    _lever,
    _measure_ensemble,
    _unaffordable,
    afford_together,
    log_step_slope,
    training_loss,
)
from upres.auto.measure import FP32, end_dtype, end_options, megapixels_of, score, timed_pass
from upres.auto.precision import (
    BACKEND_GAIN,
    END_TEST_PASSES,
    INT8_DB,
    PRECISION_DB,
    QUANTIZE_COST,
    choose_end_backend,
    choose_precision,
    measure_test_costs,
)
from upres.auto.probes import (
    DEFAULT_LR,
    LAYOUT_GAIN,
    MIN_STEPS,
    ROUND_STEPS,
    SCRATCH_MIN_STEPS,
    SCRATCH_SLACK,
    SIZE_TIMINGS,
    _sized,
    _step_model,
    _tail_first_unjudged,
    range_rate,
    untrained_start,
)
from upres.auto.starts import (
    _end_too_slow,
    _reference,
    _score_starts,
    _val_count,
    preset_names,
    score_candidates,
    starts_that_leave_training,
    time_starts,
)
from upres.cli import main
from upres.errors import DataError
from upres.inference.int8 import CROP_SIDE, CROPS
from upres.io import images
from upres.io.loading import load_weights, save_model
from upres.scoring import metrics
from upres.training.config import load_config


@pytest.fixture(scope="module")
def auto_set(tmp_path_factory) -> Path:
    return make_recipe_set(tmp_path_factory.mktemp("autoset"))


@pytest.fixture(scope="module")
def starts(tmp_path_factory) -> tuple[Path, Path]:
    """A sensible start, and one whose output is garbage (random, last layer scaled up)."""
    folder = tmp_path_factory.mktemp("starts")
    save_model(nearest_rrdbnet(), folder / "good.safetensors")
    bad = tiny_rrdbnet(num_block=2, seed=1)
    with torch.no_grad():
        bad.conv_last.weight.mul_(50)
    save_model(bad, folder / "bad.safetensors")
    return folder / "good.safetensors", folder / "bad.safetensors"


def _options(starts, budget: float, tmp_path: Path) -> AutoOptions:
    return AutoOptions(budget, device="cpu", pretrained=(), candidates=tuple(map(str, starts)),
                       cache_dir=str(tmp_path / "cache"), progress=False)


def test_auto_writes_a_submission_within_the_budget_and_drops_the_bad_start(auto_set, starts,
                                                                              tmp_path):
    budget = 75.0
    began = time.monotonic()
    result = run_auto(auto_set, tmp_path / "run", _options(starts, budget, tmp_path),
                      say=lambda _: None)
    wall = time.monotonic() - began
    assert wall <= budget * 1.05 + 3, wall  # the budget holds, prediction included
    assert wall >= budget * 0.75, wall  # and is used
    for k in range(2):
        out = images.read_image(result.submission / f"t{k}.png")
        assert out.shape == (128, 128, 3)
    assert (tmp_path / "run" / "submission.zip").stat().st_size > 0
    record = json.loads((tmp_path / "run" / "auto.json").read_text())
    phases = record["phases"]
    assert list(phases) == ["check", "fingerprint", "split", "candidates", "probes", "halving",
                            "levers", "final", "end", "submit"]
    spans = [(phase["began"], phase["seconds"]) for phase in phases.values()]  # the time line
    assert all(b2 >= b1 + s1 - 0.5 for (b1, s1), (b2, _) in zip(spans, spans[1:]))
    assert spans[-1][0] + spans[-1][1] <= record["spent"] + 0.5
    scores = {c["name"]: c["psnr0"] for c in phases["candidates"]["candidates"]}
    assert scores["good"] > scores["bad"] + 3  # the garbage start is far below at step 0
    first = phases["halving"]["rounds"][0]
    assert all(not arm.startswith("bad") for arm in first["kept"])  # and validation drops it
    assert not phases["halving"]["winner"].startswith("bad")
    levers = phases["levers"]
    for lever in (levers["self_ensemble"], levers["ensemble"]):  # each decision follows its numbers
        if "gain_db" in lever:
            loss = lever["training_loss_db"]  # None: its time would not fit
            assert lever["net_db"] == (-1e9 if loss is None else
                                       pytest.approx(lever["gain_db"] - loss, abs=1e-3))
            assert lever["keep"] == (lever["net_db"] >= KEEP_DB) or "together" in lever["why"]
    options = levers["self_ensemble"]["options"]  # of 2, 4 and 8 flips, the best net gain
    assert sorted(options) == ["2", "4", "8"]  # (or beside the ensemble, the best together)
    assert levers["self_ensemble"]["net_db"] == max(o["net_db"] for o in options.values()) or (
        "beside the ensemble" in levers["self_ensemble"]["why"] and levers["ensemble"]["keep"])
    winner = phases["halving"]["winner"]  # the slope that prices them: a line in ln(step)
    value = levers["training"]  # through every validation before the final (midway ones too)
    metrics = (tmp_path / "run" / "arms" / winner / "metrics.jsonl").read_text().splitlines()
    vals = [(r["step"], r["val_psnr"]) for r in map(json.loads, metrics)
            if "val_psnr" in r and 0 < r["step"] <= value["from_step"]]
    assert vals  # one or more: how many fit in seconds of training is the timing's doing
    if vals[-1][0] < MIN_STEP_RATIO * vals[0][0]:  # one, or too close in steps to read
        assert value["slope_db_per_log_step"] is None
    else:
        x, y = np.log([s for s, _ in vals]), np.array([p for _, p in vals])
        least_squares = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
        assert value["slope_db_per_log_step"] == pytest.approx(max(least_squares, 0), abs=1e-3)
    assert phases["end"]["val_psnr"] == pytest.approx(max(phases["end"]["val_psnr_models"]), abs=0.5)
    if "speed" in levers:  # the end's speed as timed at the levers, never under the estimate
        speed = levers["speed"]
        ratio = max(1.0, speed["seconds"] / speed["estimated_seconds"])  # (each to 1 ms)
        assert speed["ratio"] == pytest.approx(ratio, abs=1e-3 + 0.002 * ratio / speed["estimated_seconds"])
    grouped = phases["end"]["weights_by_group"]  # per recipe group, where validation says so
    if "gain_db" in grouped:  # (a specialist of the runner-up needs them)
        assert grouped["keep"] == (grouped["gain_db"] >= KEEP_DB or len(phases["end"]["models"]) == 3)
        assert all(sum(w) == pytest.approx(1, abs=1e-3) for w in grouped["weights"].values())
    precision = phases["candidates"]["precision"]  # measured, or fp32 where nothing is faster
    assert precision["dtype"] == "fp32" or precision["psnr"][precision["dtype"]] >= \
        precision["psnr"]["fp32"] - PRECISION_DB
    for arm in phases["probes"]["arms"]:  # validated in the end's precision where its family runs in it
        saved = tmp_path / "run" / "arms" / arm["name"] / "config.yaml"
        if saved.exists():
            fast = precision["dtype"] in arm["dtypes"]
            saved_cfg = load_config(str(saved), [])
            assert saved_cfg.val.dtype == (precision["dtype"] if fast else "fp32")
            assert saved_cfg.train.ema_warmup  # short fine-tunes: an EMA that follows the training
    for arm in phases["probes"]["arms"]:  # the layout follows its two timings
        timed = arm["layout"]
        assert arm["channels_last"] == (timed["channels_last"] < (1 - LAYOUT_GAIN) * timed["nchw"])
        timing = arm["timing"]  # and the plan follows the step time fitted to its timings
        fitted = timing["overhead"] + timing["per_pixel"] * arm["crop"] ** 2 * arm["batch"]
        assert arm["seconds_per_step"] == pytest.approx(fitted, abs=1e-3)
        if arm["variant"] == "full":  # planned no further than 1.5x the pixels of a timed size
            top = max(b * c ** 2 for c, b, _ in timing["timed"])
            assert arm["crop"] ** 2 * arm["batch"] <= 1.5 * top or \
                len(timing["timed"]) == 1 + SIZE_TIMINGS
    page = (tmp_path / "run" / "report.html").read_text()
    assert "Halving round 1" in page and "data:image/png;base64," in page


def test_auto_refuses_a_used_folder_and_data_without_tests(auto_set, starts, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "mine.txt").write_text("keep me")
    with pytest.raises(AutoError, match="holds files already; pass --resume"):
        run_auto(auto_set, tmp_path / "used", _options(starts, 30, tmp_path))
    assert (tmp_path / "used" / "mine.txt").read_text() == "keep me"
    with pytest.raises(AutoError, match="nothing to resume"):
        run_auto(auto_set, tmp_path / "new", _options(starts, 30, tmp_path), resume=True)
    empty = tmp_path / "notest"
    (empty / "train").mkdir(parents=True)
    os.symlink(auto_set / "train" / "lr", empty / "train" / "lr")
    os.symlink(auto_set / "train" / "hr", empty / "train" / "hr")
    with pytest.raises(DataError, match="test/lr: no test images to predict"):
        run_auto(empty, tmp_path / "r2", _options(starts, 30, tmp_path))
    assert main(["auto", str(empty), "--budget", "30s", "--out", str(tmp_path / "r3"),
                 "--pretrained", "none", "--candidate", str(starts[0]), "--quiet"]) == 2


def test_resume_after_sigkill_finishes_without_redoing_recorded_phases(auto_set, starts, tmp_path):
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "upres.cli", "auto", str(auto_set), "--budget", "70s", "--out",
            str(run), "--pretrained", "none", "--candidate", str(starts[0]), "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    record_path = run / "auto.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill -9 while the arms train
        if record_path.exists() and "probes" in json.loads(record_path.read_text())["phases"]:
            break
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = json.loads(record_path.read_text())
    assert "submit" not in before["phases"]
    done = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = json.loads(record_path.read_text())
    for phase in ("check", "fingerprint", "split", "candidates", "probes"):
        assert after["phases"][phase] == before["phases"][phase], phase  # not done again
    assert sorted(p.name for p in (run / "submission").iterdir()) == ["t0.png", "t1.png"]


def test_a_range_test_rate_far_under_the_usual_one_is_distrusted():
    """x4plus on known6: 40 steps put the minimum at the first rate (suggestion 3.3e-7)."""
    assert range_rate(3.3e-7, scratch=False) == (DEFAULT_LR[False], {
        "suggestion": 3.3e-7, "distrusted": "3.3e-07 is under a tenth of 2e-04"})
    assert range_rate(3e-4, scratch=False) == (3e-4, {"suggestion": 3e-4})
    assert range_rate(5e-3, scratch=False)[0] == 1e-3  # clipped
    assert range_rate(4e-5, scratch=True) == (5e-4, {  # from scratch the usual rate is 5e-4
        "suggestion": 4e-5, "distrusted": "4.0e-05 is under a tenth of 5e-04"})


def test_head_patterns_freeze_whole_leading_modules():
    names = [n for n, _ in tiny_rrdbnet(num_block=4).named_parameters()]
    patterns = head_patterns(names, 0.5)
    assert patterns[0] == r"conv_first\." and patterns[-1].startswith(r"body\.")
    frozen = [n for n in names if any(re.match(p, n) for p in patterns)]
    assert 0.3 * len(names) < len(frozen) <= 0.5 * len(names)
    assert all(n.startswith(("conv_first", "body.")) for n in frozen)


def test_two_levers_that_pay_alone_but_not_together_keep_the_better_net_gain():
    def levers():
        return {"self_ensemble": {"keep": True, "gain_db": 0.05, "net_db": 0.03, "why": "kept"},
                "ensemble": {"keep": True, "gain_db": 0.04, "net_db": 0.035, "why": "kept"}}

    # together: 0.09 dB less 0.06 of training = 0.03, under the ensemble's 0.035 alone
    chosen = afford_together(levers(), joint_loss=lambda n: 0.06)
    assert chosen["ensemble"]["keep"] and not chosen["self_ensemble"]["keep"]
    assert "the final would train 0.060 dB less" in chosen["self_ensemble"]["why"]
    assert all(v["keep"] for v in afford_together(levers(), joint_loss=lambda n: 0.05).values())
    one = levers()
    one["ensemble"]["keep"] = False
    assert afford_together(one, joint_loss=lambda n: 0.06)["self_ensemble"]["keep"]


def test_beside_the_ensemble_the_self_ensemble_that_nets_most_together_is_kept():
    """o30t's case: x8 alone nets the most, but with the ensemble it does not fit the final
    (infinite loss); x4 with the ensemble nets 0.065 + 0.044 - 0.03 = 0.079 > 0.065 alone."""
    options = {"2": {"gain_db": 0.04, "test_seconds": 50.0, "net_db": 0.03},
               "4": {"gain_db": 0.065, "test_seconds": 150.0, "net_db": 0.05},
               "8": {"gain_db": 0.087, "test_seconds": 385.0, "net_db": 0.065}}
    levers = {"self_ensemble": {"keep": True, **options["8"], "transforms": 8, "options": options},
              "ensemble": {"keep": True, "gain_db": 0.044, "net_db": 0.042, "why": "kept"}}
    loss = {2: 0.01, 4: 0.03, 8: math.inf}
    chosen = afford_together(levers, joint_loss=loss.__getitem__)
    assert chosen["ensemble"]["keep"] and chosen["self_ensemble"]["keep"]
    assert chosen["self_ensemble"]["transforms"] == 4 and chosen["self_ensemble"]["gain_db"] == 0.065
    assert chosen["self_ensemble"]["training_loss_db"] == pytest.approx(0.015)
    assert "x4 nets the most (+0.079 dB together)" in chosen["self_ensemble"]["why"]
    levers["self_ensemble"].update(options["8"], transforms=8)
    loss.update({2: 0.08, 4: 0.08})  # every pairing costs more than it brings: the ensemble goes
    chosen = afford_together(levers, joint_loss=loss.__getitem__)
    assert chosen["self_ensemble"]["transforms"] == 8 and not chosen["ensemble"]["keep"]


def test_a_levers_time_is_priced_by_the_winners_validation_slope():
    """log-law: 0.3 dB per e-fold of steps; the final would run from step 100 for 200 s at
    2 steps/s (to step 500): a lever of 50 s ends it at step 400 instead."""
    value = {"from_step": 100, "steps_per_second": 2.0, "final_seconds": 200.0,
             "slope_db_per_log_step": 0.3}
    assert training_loss(value, 50) == pytest.approx(0.3 * math.log(500 / 400))
    assert training_loss(value, 0) == 0 and training_loss(value, 200) == math.inf
    unknown = {**value, "slope_db_per_log_step": None}  # then a share of the final, at most
    assert training_loss(unknown, 0.29 * 200) == 0 and training_loss(unknown, 0.31 * 200) == math.inf
    kept = _lever(0.1, 50, value, "x4")  # 0.1 dB against 0.067 of training
    assert kept["keep"] and kept["net_db"] == pytest.approx(0.1 - 0.3 * math.log(1.25), abs=1e-4)
    assert not _lever(0.05, 50, value, "x4")["keep"]
    dropped = _lever(0.05, 150, value, "x8")  # 0.3 ln(500/200) = 0.27 dB of training
    assert not dropped["keep"] and "would cost the training 0.275 dB" in dropped["why"]
    # a lever whose one extra test pass takes the whole final is not even measured
    assert _unaffordable(value, 150, "x2") is None
    assert _unaffordable(value, 200, "x2") == (
        "not affordable: x2 adds a pass over the test set (~3.3 min) that would take the final's "
        "3.3 min of training")
    assert _unaffordable(unknown, 0.31 * 200, "the runner-up") == (
        "not affordable: the runner-up adds a pass over the test set (~1.0 min) that would take over "
        "30% of the final's 3.3 min of training")


def test_the_slope_is_a_least_squares_line_through_every_validation():
    """Four validations of the other6 winner at 30m: the fit in ln(step) over all of them (0.145
    dB per e-fold), not the last two (0.092); steps too close read no slope, a fall reads 0."""
    scores = [(23, 23.48), (38, 23.584), (87, 23.6923), (119, 23.7211)]
    x, y = np.log([s for s, _ in scores]), np.array([p for _, p in scores])
    expected = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    assert log_step_slope(scores) == pytest.approx(expected) == pytest.approx(0.145, abs=1e-3)
    assert log_step_slope(scores[-2:]) == pytest.approx(0.0288 / math.log(119 / 87), abs=1e-4)
    assert log_step_slope([(100, 23.0), (110, 23.5)]) is None  # under MIN_STEP_RATIO apart
    assert log_step_slope([]) is None
    assert log_step_slope([(50, 23.5), (100, 23.2)]) == 0.0
    from upres.auto.report import _slope  # the page shows the points, and a journal

    value = {"from_step": 119, "steps_per_second": 0.34, "final_seconds": 717.9,  # from before
             "slope_db_per_log_step": 0.0917, "between": [[87, 23.6923], [119, 23.7211]]}
    assert "23.692 dB at step 87, 23.721 dB at step 119, fitted as 0.092 dB" in _slope(value)
    value = {**value, "points": [[s, p] for s, p in scores], "slope_db_per_log_step": 0.1448}
    assert "23.480 dB at step 23, 23.584 dB at step 38, 23.692 dB at step 87" in _slope(value)


def test_the_reserve_for_the_end_follows_the_speed_timed_at_the_levers(tmp_path):
    """Step-0 timing: 10 s per MP in fp32, the end's precision at half that; validation 0.1 MP,
    test 2 MP. Timed at the levers, 8 validation passes took 6 s against 4 s estimated: the
    reserve for x2 self-ensemble grows by that 1.5x; a faster timing never shrinks it."""
    phases = {"check": {"test_megapixels": 2.0},
              "candidates": {"candidates": [{"name": "a", "seconds_per_mp": 10.0}],
                             "precision": {"dtype": "bf16", "speed_ratio": 0.5}, "val_megapixels": 0.1},
              "probes": {"arms": [{"name": "a-full", "variant": "full"}]},
              "halving": {"winner": "a-full"}}
    run = SimpleNamespace(journal=Journal(tmp_path / "auto.json", {"phases": phases}),
                          options=SimpleNamespace(budget=600.0), end_speed=1.0, test_per_mp={})
    assert reserve_after_training(run, 2, False) == pytest.approx(1.1 * (0.5 + 2 * 10) + 10)
    speed = _calibrate(run, 6.0, passes=8)
    assert speed == {"seconds": 6.0, "estimated_seconds": 4.0, "ratio": 1.5}
    assert reserve_after_training(run, 2, False) == pytest.approx(1.1 * (0.75 + 2 * 15) + 10)
    assert _calibrate(run, 3.0, passes=8)["ratio"] == 1.0 and run.end_speed == 1.0


def test_the_end_s_fast_precision_applies_only_to_families_that_run_in_it(tmp_path):
    """bf16 measured on start ``a`` (half the time of fp32); ``p``, a preset from scratch whose
    family runs in fp32 only, ends in fp32 at its own timed speed, and so does any ensemble
    holding it (fp16 on CUDA is not safe for window transformers: the end must not ask it)."""
    phases = {"check": {"test_megapixels": 2.0},
              "candidates": {"candidates": [
                  {"name": "a", "seconds_per_mp": 10.0, "dtypes": ["fp32", "bf16"]},
                  {"name": "p", "preset": "p", "seconds_per_mp": 4.0, "dtypes": ["fp32"]}],
                  "precision": {"dtype": "bf16", "speed_ratio": 0.5}, "val_megapixels": 0.1},
              "probes": {"arms": [{"name": "a-full", "variant": "full"},
                                  {"name": "p-scratch", "variant": "scratch"}]},
              "halving": {"winner": "p-scratch", "runner_up": "a-full"}}
    run = SimpleNamespace(journal=Journal(tmp_path / "auto.json", {"phases": phases}),
                          options=SimpleNamespace(budget=600.0), end_speed=1.0, test_per_mp={})
    assert end_dtype(run, ["a-full"]) == "bf16"
    assert end_dtype(run, ["p-scratch"]) == "fp32"
    assert end_dtype(run, ["p-scratch", "a-full"]) == "fp32"
    assert _per_mp(run, "a-full", end=True) == 5.0 and _per_mp(run, "p-scratch", end=True) == 4.0
    assert _per_mp(run, "p-scratch") == 4.0 and _per_mp(run, end=True) == 5.0
    # the preset winner's end is reserved from its own timing (x2 self-ensemble): not zero
    assert reserve_after_training(run, 2, False) == pytest.approx(1.1 * (0.4 + 2 * 8) + 10)
    a, p = phases["candidates"]["candidates"]  # training validates each in its own precision too
    assert val_dtype(run, a) == "bf16" and val_dtype(run, p) == "fp32"
    assert training_val_seconds(run, a) == pytest.approx(0.5 * 10 * 0.1)
    assert training_val_seconds(run, p) == pytest.approx(4 * 0.1)
    old = {**phases["candidates"]["candidates"][1]}
    old.pop("dtypes")  # a record from before dtypes were kept: as measured
    phases["candidates"]["candidates"][1] = old
    assert end_dtype(run, ["p-scratch"]) == "bf16"


def test_a_named_preset_trains_from_scratch_beside_the_starts_on_any_device(auto_set, starts,
                                                                             tmp_path, monkeypatch):
    """``--presets ultracompact`` on a CPU (``auto`` asks for none there): the preset is timed
    at step 0, probed and trained in the halving round like the starts; a misspelt name is
    refused before anything is written."""
    with pytest.raises(AutoError, match="no preset 'ultracompakt' \\(did you mean 'ultracompact'"):
        run_auto(auto_set, tmp_path / "typo", AutoOptions(30, device="cpu", pretrained=(),
                                                           presets="ultracompakt"))
    assert not (tmp_path / "typo").exists()
    assert preset_names("auto", "cpu") == [] and preset_names("none", "cuda:0") == []
    monkeypatch.setattr(auto_probes, "SCRATCH_MIN_STEPS", 5)  # (20,000 steps: not in seconds on a CPU)
    options = AutoOptions(60, device="cpu", pretrained=(), candidates=(str(starts[0]),),
                          presets="ultracompact", cache_dir=str(tmp_path / "cache"), progress=False)
    result = run_auto(auto_set, tmp_path / "run", options, say=lambda _: None)
    phases = result.record["phases"]
    preset = next(c for c in phases["candidates"]["candidates"] if c.get("preset"))
    assert preset["name"] == "ultracompact" and preset["arch"] == "Compact" and preset["psnr0"] is None
    assert preset["seconds_per_mp"] > 0 and "fp32" in preset["dtypes"]
    arm = next(a for a in phases["probes"]["arms"] if a["name"] == "ultracompact-scratch")
    assert arm["steps_planned"] >= 5 and arm["lr"] > 0
    # planned for what it gets if it wins: half the halving (two starts) and the final, less the
    # share a specialist of the runner-up may take of the final
    won = phases["probes"]["training_seconds"] * (
        (1 - HALVING_SHARE) * (1 - LEVER_SHARE) + HALVING_SHARE / 2)
    assert arm["steps_planned"] == pytest.approx(won / arm["seconds_per_step"], rel=0.1, abs=1)  # (rounded)
    assert math.isfinite(phases["halving"]["rounds"][0]["psnr"]["ultracompact-scratch"])
    trained = load_weights(tmp_path / "run" / "arms" / "ultracompact-scratch" / "best.safetensors")
    assert trained.arch == "Compact" and trained.hparams["num_conv"] == 8
    assert sorted(p.name for p in result.submission.iterdir()) == ["t0.png", "t1.png"]


def test_the_end_runs_in_bf16_only_where_it_scores_as_fp32_and_is_faster(auto_set, monkeypatch):
    """bf16 keeps about three significant digits: a network that carries its pixels on an
    offset of 100 (added by the first layer, taken off by the last) loses them in bf16, the
    plain nearest-neighbour network does not."""
    from upres.inference import devices

    real = devices.pick_dtype  # a device whose fast precision is bf16, whatever this CPU has
    monkeypatch.setattr(devices, "pick_dtype",
                        lambda dtype, *a, **k: "bf16" if dtype == "auto" else real(dtype, *a, **k))
    run = SimpleNamespace(shard=SimpleNamespace(device="cpu"), scale=4, say=lambda _: None)
    files = [{"lr": p, "hr": auto_set / "train" / "hr" / p.name}
             for p in sorted((auto_set / "train" / "lr").iterdir())[:2]]
    plain = nearest_rrdbnet().eval()
    psnr32, seconds32 = score(plain, files, 4, "cpu")
    slow32 = 1000.0  # fp32 as if it took that long: bf16 is faster (emulated bf16 is not)
    chosen = choose_precision(plain, files, run, psnr32, slow32)
    assert chosen["dtype"] == "bf16" and chosen["psnr"]["bf16"] >= psnr32 - PRECISION_DB
    assert chosen["speed_ratio"] == round(chosen["seconds"]["bf16"] / slow32, 3)
    slower = choose_precision(plain, files, run, psnr32, 1e-6)  # as fast (fp16 on an H200 was not)
    assert slower["dtype"] == "fp32" and slower["speed_ratio"] == 1.0
    assert "not 5% faster" in slower["why"] and "lost" not in slower["why"]
    offset = nearest_rrdbnet().eval()
    with torch.no_grad():
        offset.conv_first.bias.fill_(100.0)
        offset.conv_last.bias.fill_(-100.0)
    psnr_offset, _ = score(offset, files, 4, "cpu")
    assert psnr_offset == pytest.approx(psnr32, abs=1e-3)  # the same network in fp32
    lost = choose_precision(offset, files, run, psnr_offset, slow32)
    assert lost["dtype"] == "fp32" and lost["speed_ratio"] == 1.0
    assert lost["psnr"]["bf16"] < psnr_offset - 1  # values near 100 keep steps of 0.5 in bf16
    assert "more than 0.01 dB lost" in lost["why"]


def test_a_preset_too_slow_at_its_smallest_size_is_dropped_after_one_timing(auto_set, starts, tmp_path,
                                                                           monkeypatch):
    """A preset from scratch that its first timing (crop 64 x batch 4) gives fewer than
    1/SCRATCH_SLACK of SCRATCH_MIN_STEPS is dropped there, untimed in the other layout and
    sizes; the start beside it is probed in full."""
    from upres.training import lr_find

    class Stop(Exception):
        pass

    tests, real = [], lr_find.range_test
    monkeypatch.setattr(lr_find, "range_test", lambda cfg, folder, *a, **k: tests.append(folder)
                        or real(cfg, folder, *a, **k))
    monkeypatch.setattr(auto_driver, "run_halving", lambda run: (_ for _ in ()).throw(Stop()))
    options = AutoOptions(60, device="cpu", pretrained=(), candidates=(str(starts[0]),),
                          presets="ultracompact", cache_dir=str(tmp_path / "cache"), progress=False)
    with pytest.raises(Stop):
        run_auto(auto_set, tmp_path / "run", options, say=lambda _: None)
    probes = json.loads((tmp_path / "run" / "auto.json").read_text())["phases"]["probes"]
    dropped = next(d for d in probes["dropped"] if d["name"] == "ultracompact-scratch")
    steps = int(re.match(r"(\d+) steps in the time it would get \(20000 needed\)", dropped["why"])[1])
    assert SCRATCH_SLACK * steps < SCRATCH_MIN_STEPS
    assert [f.name for f in tests if "ultracompact" in str(f)] == ["ultracompact-scratch"]
    start = [f.relative_to(tmp_path / "run" / "probes").parts[0] for f in tests
             if "ultracompact" not in str(f)]
    assert len(start) >= 2 and {a["name"] for a in probes["arms"]} == set(start)  # layout timed too


def test_starts_are_timed_warm_on_an_accelerator_and_presets_not_once_the_budget_is_spent(
        auto_set, monkeypatch):
    """On CUDA a model's first pass pays the context and cuDNN's choice of kernels (3.4 s
    against 0.05 s for x4plus on an H200): the timed pass is the second there, the only one on
    a CPU. A spent budget times the starts (one must run) but no preset."""
    built, passes = [], []

    def score(model, files, scale, device, **_):
        passes.append(model)
        return 20.0, (3.4 if passes.count(model) == 1 else 0.05)

    patch_in(monkeypatch, "score", score, auto_precision, auto_starts)
    monkeypatch.setattr(auto_starts, "_candidate", lambda source, preset, scale: (
        {"name": source or preset}, built.append(torch.nn.Conv2d(3, 3, 1)) or built[-1]))
    pair = [{"lr": sorted((auto_set / "train" / "lr").iterdir())[0]}]
    megapixels = megapixels_of(pair)
    left = [60.0]
    run = SimpleNamespace(shard=SimpleNamespace(device="cuda:0"), scale=4, say=lambda _: None,
                          clock=SimpleNamespace(left=lambda: left[0]))
    timed = time_starts(run, ["x4plus"], ["compact"], pair, missing := [])
    assert [(e["name"], e["seconds_per_mp"]) for e in timed] == \
        [(n, round(0.05 / megapixels, 2)) for n in ("x4plus", "compact")] and missing == []
    assert len(passes) == 4  # two a model
    run.shard.device, passes[:] = "cpu", []
    timed = time_starts(run, ["x4plus"], ["compact"], pair, missing)
    assert [e["seconds_per_mp"] for e in timed] == [round(3.4 / megapixels, 2)] * 2 and len(passes) == 2
    left[0] = 0.0
    timed = time_starts(run, ["x4plus"], ["compact"], pair, missing)
    assert [e["name"] for e in timed] == ["x4plus"]
    assert missing == ["compact: not timed, the budget is spent"]


def test_openvino_runs_the_end_only_where_installed_as_exact_and_faster(auto_set, starts, tmp_path,
                                                                       monkeypatch):
    """The first start through OpenVINO (fp32 here) against PyTorch's timing: chosen where it
    scores within ``PRECISION_DB``, is ``BACKEND_GAIN`` faster and saves more than its
    conversion, which is timed and kept in RUN/openvino; PyTorch where it would be slower,
    would lose PSNR, could not pay, is not installed, or the device is not the CPU."""
    pytest.importorskip("openvino")
    from upres.inference import int8, openvino_backend

    monkeypatch.setattr(int8, "cpu_int8_flags", lambda: [])  # int8 has its own test
    run = SimpleNamespace(shard=SimpleNamespace(device="cpu"), scale=4, say=lambda _: None,
                          out=tmp_path / "run")
    files = [{"lr": p, "hr": auto_set / "train" / "hr" / p.name}
             for p in sorted((auto_set / "train" / "lr").iterdir())[:2]]
    psnr32, _ = score(nearest_rrdbnet().eval(), files, 4, "cpu")
    fp32 = {"dtype": "fp32", "speed_ratio": 1.0}
    test_mp = megapixels_of(files)  # a pass over the test set as long as validation's
    slow_torch = choose_end_backend(starts[0], files, run, psnr32, 1e3, fp32, test_mp)
    assert slow_torch["backend"] == "openvino" and slow_torch["dtype"] == "fp32"
    assert slow_torch["psnr"] == pytest.approx(psnr32, abs=PRECISION_DB)
    assert slow_torch["speed_ratio"] == pytest.approx(slow_torch["seconds"] / 1e3, abs=1e-3)
    assert slow_torch["convert_seconds"] > 0
    assert sorted(p.suffix for p in (run.out / "openvino").glob("src-*")) == [".bin", ".json", ".xml"]
    monkeypatch.setattr(auto_precision, "OPENVINO_MIN_END", 0.0)
    faster = slow_torch["seconds"] / 2  # PyTorch twice as fast as OpenVINO
    fast_torch = choose_end_backend(starts[0], files, run, psnr32, faster, fp32, test_mp)
    assert fast_torch["backend"] == "torch" and "speed_ratio" not in fast_torch
    # a conversion from scratch (0.4 s here) against PyTorch at 0.06 s a pass: OpenVINO (0.007 s
    # alone, up to 0.029 under the test suite's load; twice its first timing failed) is faster
    # but saves under 0.12 s over validation and test
    # (no test images: the end is a validation pass)
    run.out = tmp_path / "fresh"
    unpaid = choose_end_backend(starts[0], files, run, psnr32, 0.06, fp32, 0.0)
    saved = unpaid["torch_seconds"] - unpaid["seconds"]
    assert unpaid["exact"] and unpaid["seconds"] <= (1 - BACKEND_GAIN) * unpaid["torch_seconds"], unpaid
    assert unpaid["backend"] == "torch" and unpaid["convert_seconds"] > saved > 0, unpaid
    assert "s conversion" in unpaid["why"]
    better = choose_end_backend(starts[0], files, run, psnr32 + 1, 1e3, fp32, test_mp)
    assert better["backend"] == "torch" and "scored -1.000 dB" in better["why"]
    monkeypatch.setattr(auto_precision, "OPENVINO_MIN_END", 60.0)  # a short end: not even converted
    short = choose_end_backend(starts[0], files, run, psnr32, 6.4, fp32, test_mp)
    assert short == {"backend": "torch", "why": "a pass over validation and 8 over the test set take "
                     "PyTorch 58 s: too short for a conversion to pay"}
    # the end's eight passes over the test set count: at 7 s a validation pass they take 63 s
    assert choose_end_backend(starts[0], files, run, psnr32, 7.0, fp32, test_mp)["backend"] == "openvino"
    monkeypatch.setattr(openvino_backend, "openvino_available", lambda: False)
    assert "not installed" in choose_end_backend(starts[0], files, run, psnr32, 1e3, fp32, 0)["why"]
    run.shard.device = "cuda:0"
    assert choose_end_backend(starts[0], files, run, psnr32, 1e3, fp32, 0)["backend"] == "torch"


def test_int8_runs_the_end_only_where_it_scores_within_its_drop_and_pays(auto_set, starts, tmp_path,
                                                                        monkeypatch):
    """Where OpenVINO runs the end on a CPU with int8 dot products, the first start is quantized
    on the test LR (accuracy control on the validation pairs) and timed: int8 is kept only where
    it scores within ``INT8_DB`` of fp32, is ``BACKEND_GAIN`` faster than OpenVINO's precision
    and saves more than its quantization; the end's options follow the record; a CPU without
    int8 dot products does not try."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from upres.inference import int8

    monkeypatch.setattr(int8, "cpu_int8_flags", lambda: ["avx512_vnni"])
    run = SimpleNamespace(shard=SimpleNamespace(device="cpu"), scale=4, say=lambda _: None,
                          out=tmp_path / "run", data=auto_set)
    files = [{"lr": p, "hr": auto_set / "train" / "hr" / p.name}
             for p in sorted((auto_set / "train" / "lr").iterdir())[:2]]
    psnr32, _ = score(nearest_rrdbnet().eval(), files, 4, "cpu")
    fp32, test_mp = {"dtype": "fp32", "speed_ratio": 1.0}, megapixels_of(files)
    # PyTorch fp32 at 1,000 s a validation: quantizing 300 crops is estimated to cost more than
    # int8 could save over the end's passes of OpenVINO's (fast) time, so it is not tried
    record = choose_end_backend(starts[0], files, run, psnr32, 1e3, fp32, test_mp)
    estimate = QUANTIZE_COST * CROPS * CROP_SIDE ** 2 / 1e6 * 1e3 / megapixels_of(files)
    assert record["backend"] == "openvino" and not record["int8"]["keep"], record
    assert record["int8"]["estimated_quantize_seconds"] == pytest.approx(estimate, abs=0.1)
    assert record["int8"]["why"].startswith("int8 not tried: quantizing would take about ")
    assert not list((run.out / "openvino").glob("int8-*.xml"))  # nothing quantized
    monkeypatch.setattr(auto_precision, "QUANTIZE_COST", 0.0)  # a quantization that costs nothing
    record = choose_end_backend(starts[0], files, run, psnr32, 1e3, fp32, test_mp)
    q = record["int8"]
    assert q["quantize_seconds"] > 0 and list((run.out / "openvino").glob("int8-*.xml"))
    assert q["calibrate"] == [str(p) for p in sorted((auto_set / "test" / "lr").iterdir())]
    assert q["pairs"] == []  # validation is the accuracy control (NNCF's ranks every layer first)
    saves = (record["seconds"] - q["seconds"]) * (1 + END_TEST_PASSES)  # test passes as long as validation's
    assert q["keep"] == (q["psnr"] >= psnr32 - INT8_DB and saves > q["quantize_seconds"]
                         and q["seconds"] <= (1 - BACKEND_GAIN) * record["seconds"]), q
    assert (record["dtype"] == "int8") == q["keep"] and q["why"].startswith("int8 scored ")
    run.journal = Journal(tmp_path / "auto.json", {"phases": {"candidates": {
        "end_backend": {**record, "int8": {**q, "keep": True}}}}})
    options = end_options(run, "bf16")
    assert options.dtype == "int8" and options.calibrate == tuple(map(Path, q["calibrate"]))
    assert options.calibrate_pairs == ()
    assert end_options(run, "fp32").dtype == "fp32"  # a family that runs fp32 only stays so
    monkeypatch.setattr(int8, "cpu_int8_flags", lambda: [])
    record = choose_end_backend(starts[0], files, run, psnr32, 1e3, fp32, test_mp)
    assert not record["int8"]["keep"] and "no int8 dot products" in record["int8"]["why"]


def test_the_end_s_openvino_speed_and_conversions_count_for_families_it_converts(tmp_path):
    """OpenVINO measured at 0.3x PyTorch fp32 on start ``a`` (its conversion 5 s); ``p``, a
    family it does not convert, ends in PyTorch at its own speed and converts nothing."""
    phases = {"check": {"test_megapixels": 2.0},
              "candidates": {"candidates": [
                  {"name": "a", "seconds_per_mp": 10.0, "dtypes": ["fp32"], "openvino": True},
                  {"name": "p", "seconds_per_mp": 4.0, "dtypes": ["fp32"], "openvino": False}],
                  "precision": {"dtype": "fp32", "speed_ratio": 1.0}, "val_megapixels": 0.1,
                  "end_backend": {"backend": "openvino", "speed_ratio": 0.3, "convert_seconds": 5.0}},
              "probes": {"arms": [{"name": "a-full", "variant": "full"},
                                  {"name": "p-full", "variant": "full"}]},
              "halving": {"winner": "a-full", "runner_up": "p-full"}}
    run = SimpleNamespace(journal=Journal(tmp_path / "auto.json", {"phases": phases}),
                          options=SimpleNamespace(budget=600.0), end_speed=1.0, test_per_mp={}, out=tmp_path,
                          shard=SimpleNamespace(device="cpu"))
    assert _per_mp(run, "a-full", end=True) == pytest.approx(3.0)
    assert _per_mp(run, "p-full", end=True) == 4.0 and _per_mp(run, "a-full") == 10.0
    assert reserve_after_training(run, 1, False) == pytest.approx(1.1 * (0.3 + 6) + 5 + 10)
    assert reserve_after_training(run, 1, True) == pytest.approx(1.1 * (0.7 + 14) + 5 + 10)
    phases["fingerprint"], phases["candidates"]["val_used"] = {"groups": 7}, 4  # 3 groups unseen, at most
    assert reserve_after_training(run, 1, True) == pytest.approx(1.1 * (2.5 * 0.7 + 14) + 5 + 10)
    assert reserve_after_training(run, 1, False) == pytest.approx(1.1 * (0.3 + 6) + 5 + 10)  # one model
    options = end_options(run, "fp32", tile=0)
    assert options.backend == "auto" and options.convert_cache == tmp_path / "openvino"
    phases["candidates"]["end_backend"] = {"backend": "torch"}
    assert end_options(run, "fp32").backend == "torch"
    assert reserve_after_training(run, 1, False) == pytest.approx(1.1 * (1 + 20) + 10)


def test_the_sizing_fits_a_step_overhead_and_plans_from_it():
    """Steps timed at two sizes of a cost of 0.25 s + 10 us per HR pixel: the fit recovers both
    and plans the largest batch that still gives MIN_STEPS; one timing alone (no overhead)
    overestimates large crops and plans a smaller one."""
    def cost(crop, batch):
        return 0.25 + 1e-5 * crop ** 2 * batch

    model = _step_model([(64 ** 2 * 4, cost(64, 4)), (128 ** 2 * 8, cost(128, 8))])
    assert model == pytest.approx((0.25, 1e-5))
    arm = {"crop": 64, "batch": 4}
    seconds = MIN_STEPS * 3.0  # 3 s a step: at most (3 - 0.25) / 1e-5 = 275,000 pixels
    sized = _sized(arm, model, seconds, min_side=500, scale=4)
    assert (sized["crop"], sized["batch"]) == (256, 4)  # 262,144 pixels; 192 x 8 is 294,912
    assert sized["seconds_per_step"] == pytest.approx(cost(256, 4), abs=1e-3)
    assert sized["steps_planned"] == int(seconds / cost(256, 4)) >= MIN_STEPS
    linear = _sized(arm, _step_model([(64 ** 2 * 4, cost(64, 4))]), seconds, 500, 4)
    assert linear["crop"] ** 2 * linear["batch"] <= seconds / MIN_STEPS / (cost(64, 4) / 64 ** 2 / 4)
    assert (linear["crop"], linear["batch"]) == (96, 8)
    assert _step_model([(100, 2.0), (200, 1.0)]) == (0.0, 0.02)  # noise: the costlier reading


def test_an_arm_trains_only_at_crops_its_family_takes():
    """CRAFT's LR sides must be whole 16-pixel windows: the sizing that gives a 4-multiple arm
    96 x 8 gives CRAFT a crop of 64's multiples (known6 at 30 minutes planned CRAFT at 96, and
    training's preflight ended the run in its first halving round); the start's record carries
    the multiple from its family's descriptor."""
    from upres.auto.probes import crop_step
    from upres.auto.starts import _candidate

    def cost(crop, batch):
        return 0.25 + 1e-5 * crop ** 2 * batch

    model = _step_model([(64 ** 2 * 4, cost(64, 4))])
    seconds = MIN_STEPS * 3.0
    plain = _sized({"crop": 64, "batch": 4}, model, seconds, 500, 4)
    craft = _sized({"crop": 64, "batch": 4, "size_multiple": 16}, model, seconds, 500, 4)
    assert (plain["crop"], plain["batch"]) == (96, 8)
    assert (craft["crop"], craft["batch"]) == (128, 4)  # 65,536 pixels, the most of 64's multiples
    entry, _ = _candidate(None, "craft", 4)
    assert entry["size_multiple"] == 16 and crop_step(entry, 4) == 64
    assert _candidate(None, "span-ch28", 4)[0]["size_multiple"] == 1


def test_the_validation_curve_sums_an_arm_s_minutes_across_its_rounds():
    """Each halving round and the final resume the arm in a new session whose clock starts at 0
    (minicomp at 60m: step 35 at 265 s, then step 39 at 35 s): the page's curve runs on."""
    from upres.auto.report import validation_points

    end = {"phase_seconds": {"training steps": 1.0}}  # written as a session ends
    records = [{"step": 19, "val_psnr": 23.9, "train_seconds": 147.0}, {"step": 20, "loss": 0.1},
               {"step": 35, "val_psnr": 24.7, "train_seconds": 265.0}, {"step": 35, **end},
               {"step": 39, "val_psnr": 24.8, "train_seconds": 35.0},
               {"step": 105, "val_psnr": 25.4, "train_seconds": 536.0}, {"step": 105, **end},
               {"step": 303, "val_psnr": 25.6, "train_seconds": 1391.0}]  # (the final)
    minutes = [m for m, _ in validation_points(records)]
    assert minutes == pytest.approx([147 / 60, 265 / 60, 300 / 60, 801 / 60, 2192 / 60])
    killed = [r for r in records if "phase_seconds" not in r][:4]  # no end record: the clock
    assert [m for m, _ in validation_points(killed)] == pytest.approx([147 / 60, 265 / 60, 300 / 60])
    assert [p for _, p in validation_points(records)] == [23.9, 24.7, 24.8, 25.4, 25.6]
    assert validation_points(records, 22.5)[:2] == [(0.0, 22.5), (minutes[0], 23.9)]  # the start's score


def _auto_rank(rank: int, world: int, port: int, argv: list[str], codes: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    code = main(argv)
    Path(f"{codes}.{rank}").write_text(str(code))
    torch.distributed.destroy_process_group()


def test_auto_under_two_gloo_processes_trains_the_arms_with_ddp_and_submits(auto_set, starts,
                                                                             tmp_path):
    """What ``torchrun --nproc_per_node 2 -m upres.cli auto`` runs (gloo here, NCCL on GPUs):
    rank 0 does the measuring phases and tells the other rank, both train every arm in step
    (their plans broadcast from rank 0, or they would wait on each other for ever), only rank 0
    writes, and both exit 0."""
    run = tmp_path / "run"
    argv = ["auto", str(auto_set), "--budget", "50s", "--out", str(run), "--pretrained", "none",
            "--candidate", str(starts[0]), "--candidate", str(starts[1]), "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    torch.multiprocessing.spawn(_auto_rank, args=(2, free_port(), argv, str(tmp_path / "code")),
                                nprocs=2, join=True)
    assert [(tmp_path / f"code.{r}").read_text() for r in (0, 1)] == ["0", "0"]
    assert sorted(p.name for p in (run / "submission").iterdir()) == ["t0.png", "t1.png"]
    phases = json.loads((run / "auto.json").read_text())["phases"]
    assert phases["final"]["done"] and "submit" in phases
    trained = [d for d in (run / "arms").iterdir() if (d / "metrics.jsonl").exists()]
    assert {"good-full", "bad-full"} <= {d.name for d in trained}  # both starts trained a halving round
    for arm in trained:
        records = [json.loads(x) for x in (arm / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in records if "loss" in r]
        assert steps and steps == sorted(set(steps)), arm.name  # one writer: no step twice


def _end_run(tmp_path: Path, speeds: dict[str, float], costs: dict | None = None) -> SimpleNamespace:
    """A run record at the probes: starts at ``speeds`` s/MP (fp32, and the end's precision),
    validation 0.1 MP, test 2 MP, 200 s of budget left."""
    phases = {"check": {"test_megapixels": 2.0, "test_images": 4},
              "candidates": {"candidates": [{"name": n, "seconds_per_mp": v, "psnr0": 30.0}
                                            for n, v in speeds.items()],
                             "precision": {"dtype": "fp32", "speed_ratio": 1.0}, "val_megapixels": 0.1,
                             "bicubic_psnr": 29.0, **({"test_costs": costs} if costs else {})}}
    return SimpleNamespace(journal=Journal(tmp_path / "auto.json", {"phases": phases}),
                           options=SimpleNamespace(budget=200.0), end_speed=1.0, test_per_mp={},
                           clock=Clock(200.0), say=lambda _: None)


def test_a_start_whose_end_takes_most_of_the_time_left_is_not_trained(tmp_path):
    """Of 200 s left, a start at 100 s/MP needs 1.1 x (10 + 200) + 4 s for its end, more than
    ``END_SHARE``: it is not probed, and the time the others share is reserved for the slowest of them
    only. The test images' measured size factor and the refinement's seconds per MP count."""
    run = _end_run(tmp_path, {"slow": 100.0, "fast": 1.0})
    fit, dropped = starts_that_leave_training(run)
    assert [c["name"] for c in fit] == ["fast"]
    assert dropped[0]["name"] == "slow" and "takes ~3.9 min of the 3.3 left" in dropped[0]["why"]
    assert reserve_after_training(run, 1, False, starts=fit) == pytest.approx(1.1 * 2.1 + 4)
    assert reserve_after_training(run, 1, False) == pytest.approx(1.1 * 210 + 4)
    run = _end_run(tmp_path, {"fast": 1.0}, {"size_factor": 2.5, "refine_seconds_per_mp": 3.0})
    assert reserve_after_training(run, 2, False) == pytest.approx(1.1 * (0.1 + 2 * 5 + 6) + 4)
    run.end_speed = 1.5  # re-timed at the levers: the validation pass and the test passes
    assert reserve_after_training(run, 2, False) == pytest.approx(1.1 * (0.15 + 2 * 7.5 + 6) + 4)
    run.journal["candidates"]["test_costs"]["timed"] = {}  # test images timed as submitted: not those
    assert reserve_after_training(run, 2, False) == pytest.approx(1.1 * (0.15 + 2 * 5 + 6) + 4)

    run.test_per_mp["fast-full"] = 7.0  # the winner timed on a test image before the final: that
    run.journal.data["phases"]["probes"] = {"arms": [{"name": "fast-full", "variant": "full"}]}
    run.journal.data["phases"]["halving"] = {"winner": "fast-full"}
    assert seconds_on_test(run, "fast-full") == 14.0
    assert reserve_after_training(run, 2, False) == pytest.approx(1.1 * (0.15 + 2 * 14 + 6) + 4)


def test_openvino_is_timed_on_its_second_call_and_its_first_call_s_extra_is_reserved_once(
        tmp_path, monkeypatch):
    """OpenVINO's first inference at a new size costs extra once per model: the test image runs
    twice and the second call sets the seconds per MP; the extra is reserved once, not per MP.
    PyTorch runs it once."""
    now = [0.0]
    patch_in(monkeypatch, "time", SimpleNamespace(perf_counter=lambda: now[0], monotonic=time.monotonic),
             auto_measure, auto_precision)
    lr = np.zeros((500, 200, 3), np.float32)  # 0.1 MP

    def upscaler(name: str, calls: list[float]) -> SimpleNamespace:
        def upscale_float(_):
            now[0] += calls.pop(0)
            return "sr"
        return SimpleNamespace(backend=SimpleNamespace(name=name), upscale_float=upscale_float)

    assert timed_pass(upscaler("openvino", [3.0, 2.0]), lr) == (pytest.approx(20.0), 1.0, "sr")
    assert timed_pass(upscaler("torch", [3.0, 2.0]), lr) == (pytest.approx(30.0), 0.0, "sr")
    run = _end_run(tmp_path, {"fast": 1.0}, {"size_factor": 2.0, "timed": {"first_call_seconds": 9.0}})
    assert seconds_on_test(run, None) == pytest.approx(9.0 + 1.0 * 2.0 * 2.0)  # 2 MP of test images
    run.test_per_mp["fast-full"] = 7.0
    assert seconds_on_test(run, "fast-full") == pytest.approx(9.0 + 7.0 * 2.0)


def test_the_end_is_measured_on_the_first_start_that_can_train_and_slower_ones_are_not_scored(tmp_path):
    """Of 200 s left (60% for a start's end), over 0.1 MP of validation and 2 MP of test: a
    start at 100 s/MP on one pair would take 210 s, one at 10 s/MP 21 s. The reference is the
    first that fits in fp32, else the fastest; a start too slow even at the reference's
    fastest end is not scored, and not trained."""
    run = _end_run(tmp_path, {})
    files = [{"lr": tmp_path / "v.png"}]
    images.write_image(files[0]["lr"], np.zeros((100, 1000, 3), np.uint8))  # 0.1 MP
    slow, fast, faster = ({"name": n, "source": n, "seconds_per_mp": v}
                          for n, v in [("slow", 100.0), ("fast", 10.0), ("faster", 5.0)])
    said = []
    run.say = said.append
    assert _reference(run, [slow, fast, faster], files) is fast
    assert said == ["  measuring the end on fast: the first start whose end fits"]
    assert _reference(run, [{**slow, "seconds_per_mp": 300.0}, slow], files)["seconds_per_mp"] == 100.0
    assert _end_too_slow(run, fast, files, 1.0) is None
    assert _end_too_slow(run, slow, files, 0.45) is None  # 94.5 s: it may be scored
    assert _end_too_slow(run, slow, files, 1.0) == (
        "its end (a validation and the test set) would take ~3.5 min of the 3.3 left "
        "(at most 60% may go to it)")
    run.journal["candidates"]["candidates"] = [
        {"name": "slow", "psnr0": None, "seconds_per_mp": 100.0, "unscored": "its end ... takes long"},
        {"name": "fast", "psnr0": 30.0, "seconds_per_mp": 1.0}]
    fit, dropped = starts_that_leave_training(run)
    assert [c["name"] for c in fit] == ["fast"]
    assert dropped == [{"name": "slow", "why": "its end ... takes long: not scored or trained"}]
    from upres.auto.report import write_report

    for cand in run.journal["candidates"]["candidates"]:
        cand.update(arch="RRDBNet", params=1e6)
    run.journal["candidates"].update(reference="fast", bicubic_psnr=29.0, precision=FP32)
    page = write_report({"phases": {**run.journal.data["phases"], "probes": {"dropped": dropped}},
                         "spent": 60.0, "options": {"budget": 200.0}},
                        tmp_path).read_text()
    assert "<td>not scored</td><td>100 (one pair)</td>" in page.replace("<td class='num'>", "<td>")
    assert "test costs measured on <b>fast</b>" in page and "not scored or trained" in page


def test_the_number_of_validation_pairs_follows_the_reference_s_speed(tmp_path):
    """One validation may take ``VAL_SHARE`` of the budget (200 s: 8 s) at the reference's fp32
    speed, 2 pairs at least: the slow first start would allow 2 of the 12, the reference all."""
    run = _end_run(tmp_path, {})
    files = [{"lr": tmp_path / f"v{i}.png"} for i in range(12)]
    for f in files:
        images.write_image(f["lr"], np.zeros((100, 100, 3), np.uint8))  # 0.01 MP each
    slow, mid, fast = ({"name": n, "source": n, "seconds_per_mp": v}
                       for n, v in [("slow", 400.0), ("mid", 100.0), ("fast", 10.0)])
    assert [_val_count(run, e, files) for e in (slow, mid, fast)] == [2, 8, 12]
    assert _val_count(run, slow, files[:1]) == 1
    assert _reference(run, [slow, fast], files) is fast  # slow's end: 808 s of 200


def test_the_reference_is_scored_first_and_sets_the_end_the_others_are_judged_by(auto_set, starts,
                                                                                  tmp_path, monkeypatch):
    """The end's precision and backend are measured on the reference (scored first, whatever
    its place); a start whose end is too slow at the reference's measured speed is recorded
    unscored, with why, in the order given."""
    run = _end_run(tmp_path, {})
    run.shard, run.scale, run.say = SimpleNamespace(device="cpu"), 4, lambda _: None
    files = [{"lr": p, "hr": auto_set / "train" / "hr" / p.name}
             for p in sorted((auto_set / "train" / "lr").iterdir())[:2]]
    measured = []
    monkeypatch.setattr(auto_starts, "choose_precision", lambda model, *_: measured.append(model) or
                        {"dtype": "fp32", "speed_ratio": 0.5})
    monkeypatch.setattr(auto_starts, "choose_end_backend",
                        lambda source, *_: {"backend": "torch", "on": source})
    slow = {"name": "bad", "source": str(starts[1]), "seconds_per_mp": 1e6}
    ref = {"name": "good", "source": str(starts[0]), "seconds_per_mp": 1.0}
    scored, precision, backend, first = _score_starts(run, [slow, ref], ref, files)
    assert [e["name"] for e in scored] == ["good", "bad"] and backend["on"] == str(starts[0])
    assert scored[0]["psnr0"] > 20 and first[0] == str(starts[0]) and precision["speed_ratio"] == 0.5
    assert scored[1]["psnr0"] is None and "would take" in scored[1]["unscored"]
    assert len(measured) == 1
    # the reference cannot train (none could): the others are scored where they could predict
    scored, *_ = _score_starts(run, [slow, ref], slow, files)
    assert [e["name"] for e in scored] == ["bad", "good"]
    assert None not in [e["psnr0"] for e in scored] and not any("unscored" in e for e in scored)
    run.clock = Clock(0.5)  # not even as they are
    scored, *_ = _score_starts(run, [slow, {**ref, "seconds_per_mp": 1e5}], slow, files)
    assert scored[1]["unscored"].endswith("left") and scored[1]["psnr0"] is None


def test_the_final_plans_longer_past_the_probe_s_speed_than_past_a_measured_one(tmp_path,
                                                                               monkeypatch):
    """1000 s for the final at 2 s a step: 1.25 x 500 steps planned from the probe's timing
    alone, 1.1 x the median logged speed where the arm trained in a halving round; the time
    ends the schedule (the arm trains for the planned seconds), and the step reached is kept."""
    trained = []
    patch_in(monkeypatch, "reserve_after_training", lambda *_, **__: 0.0,
             auto_starts, auto_probes, auto_levers, auto_final)
    patch_in(monkeypatch, "training_val_seconds", lambda *_: 0.0, auto_arms, auto_final)
    monkeypatch.setattr(auto_final, "time_on_test_image", lambda *_: None)
    patch_in(monkeypatch, "train_arm", lambda run, arm, seconds, steps: trained.append((seconds, steps)),
             auto_halving, auto_final)

    def final(records: list[dict]) -> dict:
        folder = tmp_path / "run" / "arms" / "a-full"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        phases = {"halving": {"winner": "a-full"}, "levers": {"ensemble": {"keep": False}},
                  "probes": {"arms": [{"name": "a-full", "variant": "full", "seconds_per_step": 2.0}]}}
        run = SimpleNamespace(journal=Journal(tmp_path / "auto.json", {"phases": phases}),
                              shard=SimpleNamespace(main=True, broadcast=lambda x: x),
                              clock=Clock(1000.0), out=tmp_path / "run", say=lambda _: None,
                              test_per_mp={})
        patch_in(monkeypatch, "kept_transforms", lambda _: 1, auto_final, auto_ending)
        run_final(run)
        return phases["final"]

    record = final([])
    assert record["specialist"] == {"groups": [], "why": "no ensemble with the runner-up"}  # (said why)
    assert abs(record["iterations"] - PROBE_OVERSHOOT * 500) <= 1 and record["rate_from"] == "probe"
    assert trained[-1] == (pytest.approx(1000.0, abs=1.0), record["iterations"])
    record = final([{"step": 10, "it_per_s": 0.4}, {"step": 20, "it_per_s": 0.5},
                    {"step": 30, "it_per_s": 0.6}, {"step": 30, "val_psnr": 25.5}])
    assert abs(record["iterations"] - (30 + FINAL_OVERSHOOT * 500)) <= 1  # the median, 0.5 a second
    assert record["rate_from"] == "training" and record["from_step"] == 30
    assert record["psnr"] == 25.5 and record["reached_step"] == 30  # nothing trained here


def test_the_winner_is_timed_on_the_largest_test_image_as_the_end_runs_it(auto_set, starts, tmp_path):
    """Only where the test images were timed at step 0 (larger than validation's); the winner
    (here its start, before it trained) through the end's backend, in seconds per LR MP."""
    data = tmp_path / "data"
    (data / "test" / "lr").mkdir(parents=True)
    big = np.ascontiguousarray(images.read_image(auto_set / "test" / "lr" / "t0.png"))
    images.write_image(data / "test" / "lr" / "big.png", np.tile(big, (3, 3, 1)))
    phases = {"candidates": {"candidates": [{"name": "good", "dtypes": ["fp32"], "arch": "RRDBNet",
                                             "hparams": {"num_block": 2}},
                                            {"name": "ref", "arch": "RRDBNet", "hparams": {"num_block": 6}}],
                             "test_costs": {}, "end_backend": {"backend": "torch"}, "reference": "ref"},
              "probes": {"arms": [{"name": "good-full", "variant": "full", "source": str(starts[0])}]}}
    said = []
    run = SimpleNamespace(data=data, out=tmp_path / "run", shard=SimpleNamespace(device="cpu"),
                          say=said.append, journal=Journal(tmp_path / "a.json", {"phases": phases}))
    assert time_on_test_image(run, "good-full") is None and not said
    phases["candidates"]["test_costs"]["timed"] = {"image": "big.png"}
    per_mp = time_on_test_image(run, "good-full")
    assert per_mp > 0 and said[-1] == f"  big.png: {per_mp:.1f} s/MP"
    # the reference's network was timed on that image already: its figure, nothing run again
    phases["candidates"]["reference"] = "good"
    phases["candidates"]["test_costs"]["timed"] = {"image": "big.png", "seconds_per_mp": 7.25}
    assert time_on_test_image(run, "good-full") == 7.25
    assert said[-1] == "  good-full: 7.2 s/MP on big.png, as timed on good (the same network)"


def test_where_no_start_can_train_or_beat_bicubic_bicubic_is_chosen_naming_the_budget(tmp_path):
    run = _end_run(tmp_path, {"slow": 1000.0, "slower": 2000.0})
    probes = untrained_start(run, [])  # 1.1 x 2100 + 4 = 2314 s: 64.3 min with it at 60%, and one
    assert probes["arms"] == [] and probes["budget"] == 200.0
    assert re.search(r"no start as it is fits in the 3\.3 min left and beats bicubic \(29\.000 dB on "
                     r"validation\); --budget 66m would give slow", probes["bicubic"])


def test_an_end_under_bicubic_on_validation_gives_way_to_bicubic(tmp_path):
    """A start trained too briefly to pass bicubic on validation is set aside, recorded and shown."""
    from upres.auto.report import write_report

    end = {"models": ["a.safetensors"], "val_psnr": 24.9, "bicubic_psnr": 25.0, "refine": {"keep": True}}
    bicubic = {"models": ["bicubic"], "val_psnr": 25.0, "bicubic_psnr": 25.0}
    said = []
    floored = floor_at_bicubic(end, bicubic, said.append)
    assert floored == {**bicubic, "instead_of": {"models": ["a.safetensors"], "val_psnr": 24.9}}
    assert said == ["  the end scores 24.900 dB on validation, under bicubic's 25.000: the submission "
                    "is bicubic"]
    assert floor_at_bicubic({**end, "val_psnr": 25.0}, bicubic, said.append) == {**end, "val_psnr": 25.0}
    assert len(said) == 1
    submit = {"images": 2, "folder": "f", "zip": "z", "predict_seconds": 0.1, "seconds": 0.1}
    record = {"phases": {"end": floored, "submit": submit}, "spent": 1.0, "options": {"budget": 2.0}}
    page = write_report(record, tmp_path).read_text()
    assert "the end's a scored 24.9 dB on validation, under bicubic's 25.0 dB" in page


def test_where_nothing_beats_bicubic_in_the_time_the_submission_is_bicubic(auto_set, starts, tmp_path,
                                                                           monkeypatch):
    """No start leaves time to train and none beats bicubic: the submission is the bicubic
    baseline, bit for bit, with its page; resumed with a larger budget, the run probes again and
    replaces it (the folder it wrote is not in the way)."""
    monkeypatch.setattr(auto_probes, "starts_that_leave_training", lambda run: ([], []))
    real = score_candidates
    monkeypatch.setattr(auto_driver, "score_candidates", lambda run: {**real(run), "bicubic_psnr": 99.0})
    result = run_auto(auto_set, tmp_path / "run", _options(starts, 30, tmp_path), say=lambda _: None)
    phases = result.record["phases"]
    assert "halving" not in phases and "levers" not in phases and phases["end"]["models"] == ["bicubic"]
    assert "beats bicubic (99.000 dB on validation)" in phases["probes"]["bicubic"]
    for lr in (auto_set / "test" / "lr").iterdir():
        expected = metrics.bicubic_upscale(images.read_image(lr), 4)
        assert np.array_equal(images.read_image(result.submission / lr.name), expected)
    with zipfile.ZipFile(tmp_path / "run" / "submission.zip") as zf:
        assert sorted(zf.namelist()) == ["t0.png", "t1.png"]
    assert "The submission is bicubic" in (tmp_path / "run" / "report.html").read_text()
    again = run_auto(auto_set, tmp_path / "run", _options(starts, 40, tmp_path), resume=True,
                     say=lambda _: None)
    assert again.record["phases"]["probes"]["budget"] == 40  # probed again with the larger budget
    assert again.record["phases"]["candidates"] == phases["candidates"]  # kept
    assert sorted(p.name for p in again.submission.iterdir()) == ["t0.png", "t1.png"]


def test_where_no_arm_can_train_the_best_start_predicts_as_it_is(auto_set, starts, tmp_path,
                                                                 monkeypatch):
    """Every start's end too long to leave training time (``END_SHARE`` 0) and the good start
    above bicubic at step 0: nothing trains, the good start predicts the test set as it is,
    within the budget. A test image of 9x a validation image's pixels is timed as the
    submission runs it, and its cost per MP scales the test set's."""
    data = tmp_path / "data"
    (data / "test" / "lr").mkdir(parents=True)
    os.symlink(auto_set / "train", data / "train")
    big = np.ascontiguousarray(images.read_image(auto_set / "test" / "lr" / "t0.png"))
    images.write_image(data / "test" / "lr" / "big.png", np.tile(big, (3, 3, 1)))
    patch_in(monkeypatch, "END_SHARE", 0.0, auto_starts, auto_probes)
    monkeypatch.setattr(auto_precision, "BACKEND_GAIN", -1e6)  # OpenVINO runs the end, however fast
    monkeypatch.setattr(auto_precision, "OPENVINO_MIN_END", 0.0)  # and short the end is
    real = score_candidates
    monkeypatch.setattr(auto_driver, "score_candidates", lambda run: {**real(run), "bicubic_psnr": 0.0})
    began = time.monotonic()
    result = run_auto(data, tmp_path / "run", _options(starts, 40, tmp_path), say=lambda _: None)
    assert time.monotonic() - began <= 40 * 1.05 + 3
    phases = result.record["phases"]
    assert [a["name"] for a in phases["probes"]["arms"]] == ["good-untrained"]
    assert "no arm can train in this budget" in phases["probes"]["untrained"]
    assert phases["halving"]["winner"] == "good-untrained" and phases["final"]["untrained"]
    assert not (tmp_path / "run" / "arms").exists()  # nothing trained
    assert phases["end"]["models"] == [str(starts[0])]
    assert images.read_image(result.submission / "big.png").shape == (384, 384, 3)
    costs = phases["candidates"]["test_costs"]
    timed = costs["timed"]
    assert timed["image"] == "big.png"
    assert costs["size_factor"] == pytest.approx(max(timed["seconds_per_mp"] / timed["val_seconds_per_mp"],
                                                     1.0), rel=1e-2)
    refinable = phases["fingerprint"]["groups"] > 1 and phases["fingerprint"]["classifier_accuracy"]
    assert (costs["refine_seconds_per_mp"] > 0) == bool(refinable), phases["fingerprint"]
    assert "Nothing trains" in (tmp_path / "run" / "report.html").read_text()
    if phases["candidates"]["end_backend"]["backend"] == "openvino":  # (where it is installed)
        assert list((tmp_path / "run" / "openvino").glob("src-*.xml"))  # converted once, kept there
        assert phases["candidates"]["candidates"][0]["openvino"]


def test_the_refinement_s_cost_is_timed_where_the_fingerprint_can_refine(auto_set, tmp_path,
                                                                        monkeypatch):
    """Test images no larger than the validation ones are not timed again; with two recipe
    groups and a classifier the back-projection is timed (on a bicubic output) per LR MP, and
    with one group it costs nothing."""
    from upres.degradation.fingerprint import Fingerprint

    run = SimpleNamespace(data=auto_set, out=tmp_path, scale=4, shard=SimpleNamespace(device="cpu"),
                          say=lambda _: None)
    files = [{"lr": auto_set / "train" / "lr" / "00.png", "hr": auto_set / "train" / "hr" / "00.png"}]
    for groups, refines in ((2, True), (1, False)):
        stub = SimpleNamespace(groups=[None] * groups, classifier={"accuracy": 1.0},
                               kernel=lambda group: np.full((12, 12), 1 / 144, np.float32))
        monkeypatch.setattr(Fingerprint, "load", staticmethod(lambda path, stub=stub: stub))
        costs, _ = measure_test_costs(run, None, files, "fp32")
        assert costs["size_factor"] == 1.0 and "timed" not in costs
        assert (costs["refine_seconds_per_mp"] > 0) == refines


def test_both_backends_are_timed_on_a_large_test_image_and_the_faster_runs_the_end(
        auto_set, starts, tmp_path, monkeypatch):
    """Test images of 9x a validation image's pixels, and a test set of 4 of them or more:
    PyTorch and OpenVINO (which scored as PyTorch on validation) are both timed on the largest,
    and OpenVINO runs the end where it saves more than a conversion there, whatever validation
    said; the size factor is the chosen backend's. With a test set of one such image, only the
    backend validation chose is timed."""
    pytest.importorskip("openvino")
    from upres.degradation.fingerprint import Fingerprint

    stub = SimpleNamespace(groups=[None], classifier=None)
    monkeypatch.setattr(Fingerprint, "load", staticmethod(lambda path: stub))
    data = tmp_path / "data"
    (data / "test" / "lr").mkdir(parents=True)
    big = np.ascontiguousarray(images.read_image(auto_set / "test" / "lr" / "t0.png"))
    images.write_image(data / "test" / "lr" / "big.png", np.tile(big, (3, 3, 1)))
    files = [{"lr": auto_set / "train" / "lr" / "00.png", "hr": auto_set / "train" / "hr" / "00.png"}]
    phases = {"check": {"test_megapixels": 100.0}}
    run = SimpleNamespace(data=data, out=tmp_path / "run", scale=4, shard=SimpleNamespace(device="cpu"),
                          say=lambda _: None, journal=Journal(tmp_path / "a.json", {"phases": phases}))
    measured = {"backend": "torch", "exact": True, "seconds": 0.01, "val_speed_ratio": 0.5,
                "convert_seconds": 0.0, "why": "w"}
    costs, chosen = measure_test_costs(run, (starts[0], 0.02 / megapixels_of(files)), files,
                                            "fp32", measured)
    timed = costs["timed"]
    assert sorted(timed["backends"]) == ["openvino", "torch"]
    faster = min(timed["backends"], key=timed["backends"].get)
    assert chosen["backend"] == faster and ("speed_ratio" in chosen) == (faster == "openvino")
    assert timed["seconds_per_mp"] == timed["backends"][faster]
    assert costs["size_factor"] == pytest.approx(max(timed["seconds_per_mp"] / timed["val_seconds_per_mp"],
                                                     1.0), rel=1e-2)
    assert "on big.png" in chosen["why"] and "s saved over 8 passes over the test set" in chosen["why"]
    costly = {**measured, "backend": "openvino", "speed_ratio": 0.5, "convert_seconds": 1e9}
    _, chosen = measure_test_costs(run, (starts[0], 1.0), files, "fp32", costly)
    assert chosen["backend"] == "torch" and "speed_ratio" not in chosen  # a conversion saves nothing
    phases["check"]["test_megapixels"] = 0.01  # one large test image: validation's choice timed alone
    costs, chosen = measure_test_costs(run, (starts[0], 1.0), files, "fp32", measured)
    assert list(costs["timed"]["backends"]) == ["torch"] and chosen == measured


def test_large_validation_pairs_are_validated_on_their_aligned_centres(auto_set, starts, tmp_path,
                                                                       monkeypatch):
    """Validation LR images over twice ``VAL_CROP`` squared (32x32 against a crop of 16): each
    held-out pair's centre is written to RUN/val (LR [8:24], HR [32:96]), numbered in the
    stratified order; the pairs stay out of training, training validates on the crops in the
    same order as auto scores them, and a whole run scores and submits with them."""
    from upres.io.pairs import find_pairs
    from upres.training.data import resolve_splits

    monkeypatch.setattr(auto_dataset, "VAL_CROP", 16)
    pairs, _ = find_pairs(auto_set / "train" / "lr", auto_set / "train" / "hr")
    phases = {"fingerprint": {"group_of": {p.name: i % 2 for i, p in enumerate(pairs)}}}
    run = SimpleNamespace(val_pairs=[], pairs=pairs, out=tmp_path / "r", scale=4, data=auto_set,
                          journal=Journal(tmp_path / "auto.json", {"phases": phases}),
                          options=SimpleNamespace(seed=0, cache_dir=None),
                          shard=SimpleNamespace(device="cpu"))
    split = phases["split"] = split_validation(run)
    phases["candidates"] = {"val_used": 3}
    assert split["crop"] == 16 and split["count"] == 4
    files = val_files(run)
    assert [f["lr"].name for f in files] == [f"{i:03d}-{n}.png" for i, n in enumerate(split["val"])]
    for f, name in zip(files, split["val"]):
        lr, hr = (images.read_image(auto_set / "train" / part / f"{name}.png") for part in ("lr", "hr"))
        assert (images.read_image(f["lr"]) == lr[8:24, 8:24]).all()
        assert (images.read_image(f["hr"]) == hr[32:96, 32:96]).all()
    hparams = {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_block": 2, "num_grow_ch": 4, "scale": 4}
    arm = {"crop": 16, "batch": 2, "lr": 1e-4, "ema": 0.99, "checkpoint_every": 50, "freeze": [],
           "unfreeze": [], "arch": "RRDBNet", "hparams": hparams, "source": str(starts[0])}
    splits = resolve_splits(arm_config(run, arm, 10).data)
    assert not {p.name for p in splits.train} & set(split["val"]) and len(splits.train) == 4
    assert [p.lr for p in splits.val] == [f["lr"] for f in files[:3]]

    result = run_auto(auto_set, tmp_path / "run", _options(starts, 40, tmp_path), say=lambda _: None)
    phases = result.record["phases"]
    assert phases["split"]["crop"] == 16
    assert phases["candidates"]["val_megapixels"] == pytest.approx(
        phases["candidates"]["val_used"] * 16 * 16 / 1e6, abs=1e-4)
    winner = phases["halving"]["winner"]
    metrics = (tmp_path / "run" / "arms" / winner / "metrics.jsonl").read_text()
    assert "val_psnr" in metrics
    assert sorted(p.name for p in result.submission.iterdir()) == ["t0.png", "t1.png"]


def _group_pairs(tmp_path, group_ids, predictions):
    """Validation pairs whose flat 8x8 LR's grey level names its recipe group, each with the
    models' predictions and target from ``predictions(group)``, and a labeller that reads it."""
    files, preds, targets, hrs, groups = [], [], [], [], {}
    for k, group in enumerate(group_ids):
        lr = np.full((8, 8, 3), 60 * (group + 1), np.uint8)
        images.write_image(tmp_path / f"{k}.png", lr)
        p, target = predictions(group)
        files.append({"lr": tmp_path / f"{k}.png", "hr": tmp_path / f"{k}.png"})
        preds.append(p.astype(np.float32)), targets.append(target)
        hrs.append(np.rint(target * 255).astype(np.uint8))
        groups[round(float(lr.mean()) / 255, 4)] = group

    def label(lr_rgb):
        return groups[round(float(lr_rgb.mean()), 4)], 0.9

    return files, preds, targets, hrs, label


def test_a_specialist_is_used_on_its_groups_only_where_validation_rises(tmp_path):
    """Validation pairs of groups 0 and 1; the specialist (model 2) is exact on group 0: kept,
    with weights that run it on group 0's images only; a garbage specialist is dropped."""
    from upres.inference.ensemble import Validation, fit_coefficients

    rng = np.random.default_rng(3)

    def predictions(group):
        target = rng.uniform(0.1, 0.9, (32, 32, 3))
        return np.stack([target + rng.normal(0, 0.05, target.shape) for _ in range(2)] + [target]), target

    files, preds, targets, hrs, label = _group_pairs(tmp_path, [0, 1], predictions)

    val = Validation(files, preds, targets, hrs, 4, [20.0, 20.0, 30.0])
    kept, models, used = fit_specialist(val, label, {"name": "s", "groups": [0]}, ["w", "r", "s"],
                                             lambda _: None)
    assert used["keep"] and used["gain_db"] > 1 and models == ["w", "r", "s"] and kept is val
    pooled = np.append(fit_coefficients([p[:2] for p in preds], targets), 0.0)
    weights = specialist_weights(val, label, pooled, [0])
    assert weights.by_group[0][1] == 0 and weights.by_group[0][2] > 0.5 and weights.by_group[1][2] == 0
    for p in preds:  # now the specialist is garbage
        p[2] = rng.uniform(0, 1, p[2].shape)
    dropped, models, used = fit_specialist(val, label, {"name": "s", "groups": [0]},
                                                ["w", "r", "s"], lambda _: None)
    assert not used["keep"] and used["gain_db"] < 0 and models == ["w", "r"]
    assert all(p.shape[0] == 2 for p in dropped.preds) and dropped.psnr == [20.0, 20.0]


def test_groups_the_runner_up_led_shrink_toward_the_pooled_weights_swapped(tmp_path):
    """Group 0 (one pair, led by the runner-up) wants 0.2 winner + 0.8 runner-up; group 1 (two
    pairs) wants the winner alone, so the pooled fit leans to the winner. Group 0's weights move
    halfway from its own fit toward the pooled weights exchanged, not toward the pooled ones;
    with the specialist (equal to the runner-up there) in the runner-up's place likewise."""
    from upres.inference.ensemble import Validation, fit_coefficients

    rng = np.random.default_rng(5)

    def predictions(group):
        p = rng.uniform(0.1, 0.9, (3, 32, 32, 3))
        p[2] = p[1]
        return p, 0.2 * p[0] + 0.8 * p[1] if group == 0 else p[0]

    files, preds, targets, hrs, label = _group_pairs(tmp_path, [0, 1, 1], predictions)
    val = Validation(files, preds, targets, hrs, 4, [20.0, 20.0, 20.0])
    pooled = np.append(fit_coefficients([p[:2] for p in preds], targets), 0.0)
    assert pooled[0] > 0.6  # two pairs of three want the winner alone
    without = specialist_weights(val, label, pooled, [0], use=False, led=[0])
    np.testing.assert_allclose(without.by_group[0], ([0.2, 0.8, 0] + pooled[[1, 0, 2]]) / 2, atol=2e-3)
    np.testing.assert_allclose(without.by_group[1], (2 * np.array([1.0, 0, 0]) + pooled) / 3, atol=2e-3)
    with_it = specialist_weights(val, label, pooled, [0], led=[0])
    np.testing.assert_allclose(with_it.by_group[0], ([0.2, 0, 0.8] + pooled[[1, 2, 0]]) / 2, atol=2e-3)
    unled = specialist_weights(val, label, pooled, [0], use=False)  # as before: toward pooled
    np.testing.assert_allclose(unled.by_group[0], ([0.2, 0.8, 0] + pooled) / 2, atol=2e-3)
    two = led_priors(pooled[:2], [0])  # the end's fit without a specialist
    np.testing.assert_allclose(two[0], pooled[[1, 0]])



def test_groups_no_validation_pair_showed_get_weights_fitted_on_their_training_pairs(tmp_path,
                                                                                   monkeypatch):
    """Validation pairs of groups 0 and 1 of a four-group fingerprint: images labelled as group 2
    get the weights fitted on its two training pairs (where the runner-up is exact: 1.0 to it,
    not shrunk toward the winner); group 3, with no training pair outside
    validation, the winner alone; the others the fitted weights (per group where kept, else
    pooled). The journal's record gives the submission the same coefficients and the page names
    the groups; a validation that saw every group changes nothing."""
    from types import SimpleNamespace

    from upres.auto.report import write_report
    from upres.inference.ensemble import GroupWeights
    from upres.io.pairs import Pair

    def label(lr_rgb):  # the grey level names the group, of all four
        return round(float(lr_rgb.mean()) * 255 / 60) - 1, 0.9

    image = {g: np.full((8, 8, 3), 60 * (g + 1) / 255) for g in range(4)}
    val = SimpleNamespace(lrs=[image[0], image[1], image[1]])
    group_of = {"v0": 0, "v1": 1, "a": 0, "c2": 2, "c1": 2, "c3": 2, "d": 3}
    pairs = [Pair(n, tmp_path / f"{n}-lr.png", tmp_path / f"{n}-hr.png") for n in group_of]
    for pair in pairs:
        images.write_image(pair.lr, np.full((8, 8, 3), 60 * (group_of[pair.name] + 1), np.uint8))
        images.write_image(pair.hr, np.full((32, 32, 3), 9, np.uint8))
    rng, fitted_on = np.random.default_rng(7), []

    def validate_files(files, scale):  # the runner-up exact, the winner noisy
        fitted_on.append([f["lr"].name for f in files])
        targets = [rng.uniform(0.1, 0.9, (32, 32, 3)) for _ in files]
        return SimpleNamespace(targets=targets, preds=[np.stack([t + rng.normal(0, 0.1, t.shape), t])
                                                       for t in targets])

    journal = {"split": {"val": ["v0", "v1", "d"]}, "fingerprint": {"group_of": group_of}}
    run = SimpleNamespace(journal=journal, pairs=pairs, out=tmp_path / "run", scale=4)
    predictor = SimpleNamespace(validate_files=validate_files)
    pooled = np.array([0.3, 0.7])
    fused, unseen = fit_unseen_groups(run, predictor, pooled, val, label, groups=4)
    assert fitted_on == [["c1-lr.png", "c2-lr.png"]]  # UNSEEN_PAIRS of its pairs, by name
    assert unseen["groups"] == [2, 3] and unseen["pairs"] == {"2": ["c1-lr", "c2-lr"], "3": []}
    np.testing.assert_allclose(fused(image[2]), [0.0, 1.0], atol=1e-3)
    np.testing.assert_array_equal(fused(image[3]), [1.0, 0.0])
    assert unseen["weights"]["3"] == [1.0, 0.0]
    for g in (0, 1):
        np.testing.assert_array_equal(fused(image[g]), pooled)
    grouped = GroupWeights(pooled, {0: np.array([0.9, 0.1]), 1: np.array([0.2, 0.8])}, label)
    fused, _ = fit_unseen_groups(run, predictor, grouped, val, label, groups=4)
    np.testing.assert_array_equal(fused(image[0]), [0.9, 0.1])
    np.testing.assert_allclose(fused(image[2]), [0.0, 1.0], atol=1e-3)
    assert fit_unseen_groups(run, predictor, grouped, val, label, groups=2) == (grouped, None)

    monkeypatch.setattr("upres.degradation.refine.Refiner", lambda fp: SimpleNamespace(label=label))
    fingerprint = SimpleNamespace(groups=[None] * 4)
    for keep, group0 in ((True, [0.9, 0.1]), (False, [0.3, 0.7])):
        end = {"weights": pooled.tolist(), "weights_by_group": {
            "keep": keep, "gain_db": 0.02, "weights": {"0": [0.9, 0.1], "1": [0.2, 0.8]}, "unseen": unseen}}
        coefficients = end_coefficients(end, fingerprint)
        np.testing.assert_array_equal(coefficients(image[0]), group0)
        np.testing.assert_allclose(coefficients(image[2]), unseen["weights"]["2"])
        np.testing.assert_array_equal(coefficients(image[3]), [1.0, 0.0])
    record = {"phases": {"levers": {"ensemble": {"keep": True, "gain_db": 0.05}}, "end": {
        **end, "models": ["w", "r"], "refine": {"keep": False}}}, "spent": 1.0, "options": {"budget": 2.0}}
    page = write_report(record, tmp_path).read_text()
    assert re.search(r"weights fitted on their training pairs for recipe groups 2, 3</td><td>-</td>.*"
                     r"<span class=keep>kept</span> \(no validation pair showed them; group 2: "
                     r"0\.0\d/1\.00 \(c1-lr, c2-lr\); group 3: 1\.00/0\.00 \(no training pair: "
                     r"the winner alone\)", page)
    del end["weights_by_group"]["unseen"]
    np.testing.assert_array_equal(end_coefficients(end, fingerprint), pooled)  # not kept: pooled

@pytest.fixture(scope="module")
def two_recipe_set(tmp_path_factory) -> Path:
    """12 training pairs of 160x160 in two recipes that the fingerprint tells apart (area, and
    bicubic with JPEG at quality 30), 4 test images of each."""
    from upres.degradation import recipes

    root = tmp_path_factory.mktemp("tworecipes")
    recipes.make_set(hr_folder(root), root / "set", ["area", "jpeg30"], test_fraction=0.25)
    return root / "set"


def test_the_runner_up_s_specialist_trains_on_the_groups_it_leads_and_the_end_uses_it(
        two_recipe_set, starts, tmp_path, monkeypatch):
    """Where the runner-up leads a group on validation, a copy of it trains in the final on that
    group's pairs for their share of the training pairs (at most LEVER_SHARE of the final), and
    the end runs it on that group's images in the runner-up's place (kept here whatever it
    gains: ``fit_specialist``'s decision is tested above)."""
    real = _measure_ensemble
    led = {}

    def leading(run, files, value):  # the ensemble kept, the runner-up leading the first pair's group
        result = real(run, files, value)
        led["group"] = val_groups(run, 1)[0]
        return {**result, "keep": True, "runner_up_leads": {str(led["group"]): 0.5}}

    monkeypatch.setattr(auto_levers, "_measure_ensemble", leading)
    monkeypatch.setattr(auto_ending, "floor_at_bicubic", lambda end, *_: end)  # (tiny models: under bicubic)
    patch_in(monkeypatch, "KEEP_DB", -1e9, auto_levers, auto_ending)  # whatever it gains: the end keeps it
    monkeypatch.setattr(auto_probes, "ROUND_STEPS", 10 ** 6)  # no tail-first arms: time left for the end
    result = run_auto(two_recipe_set, tmp_path / "run", _options(starts, 60.0, tmp_path), say=lambda _: None)
    phases = json.loads((tmp_path / "run" / "auto.json").read_text())["phases"]
    assert phases["fingerprint"]["groups"] > 1 and phases["fingerprint"]["classifier_accuracy"] is not None
    plan, group = phases["final"]["specialist"], led["group"]
    held = set(phases["split"]["val"])
    train = [g for n, g in phases["fingerprint"]["group_of"].items() if n not in held]
    assert plan["groups"] == [group] and plan["of"] == phases["halving"]["runner_up"], plan
    assert plan["share"] == pytest.approx(min(train.count(group) / len(train), LEVER_SHARE), abs=1e-4)
    cfg = load_config(str(tmp_path / "run" / "arms" / plan["name"] / "config.yaml"), [])
    assert cfg.data.groups == [group] and cfg.init.source == str(
        tmp_path / "run" / "arms" / plan["of"] / "best.safetensors")
    assert plan["reached_step"] >= SPECIALIST_STEPS
    end = phases["end"]
    assert end["specialist"]["groups"] == [group] and end["specialist"]["keep"]
    assert len(end["models"]) == 3 and end["models"][2].endswith(f"{plan['name']}/best.safetensors")
    assert end["weights"][2] == 0 and end["weights_by_group"]["keep"]
    assert end["weights_by_group"]["led"] == [group]
    for g, w in end["weights_by_group"]["weights"].items():
        assert w[1 if int(g) == group else 2] == 0  # each image runs two models
    assert len(list(result.submission.iterdir())) == len(list((two_recipe_set / "test" / "lr").iterdir()))
    page = (tmp_path / "run" / "report.html").read_text()
    assert f"{plan['name']}</b>, a copy of the runner-up" in page
    assert f"{plan['name']} (in {plan['of']}'s place on recipe groups {group})" in page
    assert f"(group {group}, led by the runner-up, shrunk toward the pooled weights exchanged)" in page


def test_tail_first_is_an_arm_only_where_the_halving_sees_it_unfrozen():
    """Rounds under ROUND_STEPS cannot tell the two arms apart, and rounds that end before tail
    first unfreezes would compare its frozen tail alone: both say why; else it is an arm."""
    full = {"seconds_per_step": 1.0, "steps_planned": 1000}
    assert _tail_first_unjudged(full, ROUND_STEPS - 1, 10_000, 0.5).startswith(
        f"a halving round of {ROUND_STEPS - 1} s holds")
    assert _tail_first_unjudged(full, 400, 499, 0.5) == (
        "the halving ends by step 499, before tail first unfreezes (step 500): it would compare "
        "the frozen tail alone")
    assert _tail_first_unjudged(full, 400, 500, 0.5) == ""
