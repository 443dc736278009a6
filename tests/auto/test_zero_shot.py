"""The zero-shot ensemble: the soft vote of the best starts as published, a candidate that costs
no training; the end takes it only where it scores higher on validation and its test pass fits."""

from __future__ import annotations

import html
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import make_recipe_set, nearest_rrdbnet, patch_in
from upres.auto import driver as auto_driver
from upres.auto import precision as auto_precision
from upres.auto import probes as auto_probes
from upres.auto import starts as auto_starts
from upres.auto.clock import Clock
from upres.auto.driver import run_auto
from upres.auto.journal import AutoOptions, Journal
from upres.auto.report import write_report
from upres.auto.zeroshot import MEMBERS, SHARE, prefer_zero_shot, zero_shot_ensemble
from upres.inference.ensemble import rgb_input
from upres.inference.upscaler import InferenceOptions, Upscaler
from upres.io import images
from upres.io.loading import save_model
from upres.scoring import metrics

BIAS = 0.03  # each start's constant error: one too bright, one too dark


def _biased(folder: Path, name: str, bias: float) -> Path:
    """The nearest-neighbour start with a constant added to every output pixel."""
    model = nearest_rrdbnet()
    with torch.no_grad():
        model.conv_last.bias.fill_(bias)
    path = folder / f"{name}.safetensors"
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def biased(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("biased")
    return _biased(folder, "bright", BIAS), _biased(folder, "dark", -BIAS)


def _pairs(folder: Path, count: int = 2) -> list[dict]:
    """LR in [0.2, 0.8] (no clipping after the bias) and HR its nearest upscaling plus noise."""
    rng, files = np.random.default_rng(0), []
    for k in range(count):
        lr = rng.integers(51, 204, (12, 16, 3), dtype=np.uint8)
        hr = np.clip(np.repeat(np.repeat(lr, 4, 0), 4, 1).astype(int) + rng.integers(-3, 4, (48, 64, 3)),
                     0, 255).astype(np.uint8)
        files.append({"lr": folder / f"lr{k}.png", "hr": folder / f"hr{k}.png"})
        images.write_image(files[-1]["lr"], lr)
        images.write_image(files[-1]["hr"], hr)
    return files


def _run(tmp_path: Path, budget: float = 100.0) -> SimpleNamespace:
    return SimpleNamespace(clock=Clock(budget), shard=SimpleNamespace(device="cpu"), say=lambda _: None)


def test_the_best_starts_above_bicubic_are_voted_and_scored_as_an_independent_fusion(tmp_path, biased):
    """Of four starts, the preset (unscored) and the one under bicubic stay out; the two biased
    ones are fitted equal weights (their errors cancel), and the score is the fused image's as
    computed here from the nearest-neighbour upscaling."""
    files = _pairs(tmp_path)
    bright, dark = biased
    scored = [{"name": "bright", "source": str(bright), "psnr0": 30.0, "val_seconds": 0.1},
              {"name": "low", "source": str(bright), "psnr0": 20.0, "val_seconds": 0.1},
              {"name": "scratch", "preset": "tiny", "psnr0": None, "val_seconds": 0.1},
              {"name": "dark", "source": str(dark), "psnr0": 30.5, "val_seconds": 0.1}]
    record = zero_shot_ensemble(_run(tmp_path), scored, files, bicubic=25.0)
    assert record["members"] == ["dark", "bright"] and record["sources"] == [str(dark), str(bright)]
    assert record["weights"] == pytest.approx([0.5, 0.5], abs=0.02)
    expected = []
    for f in files:
        near = np.repeat(np.repeat(images.read_image(f["lr"]), 4, 0), 4, 1) / 255.0
        w_dark, w_bright = record["weights"]
        fused = np.clip(np.round((near + BIAS * (w_bright - w_dark)) * 255), 0, 255).astype(np.uint8)
        expected.append(metrics.psnr(fused, images.read_image(f["hr"]), 4))
    assert record["val_psnr"] == pytest.approx(np.mean(expected), abs=1e-3)
    singles = [metrics.psnr(np.clip(np.round((np.repeat(np.repeat(images.read_image(f["lr"]), 4, 0), 4, 1)
                                              / 255.0 - BIAS) * 255), 0, 255).astype(np.uint8),
                            images.read_image(f["hr"]), 4) for f in files]
    assert record["val_psnr_models"][0] == pytest.approx(np.mean(singles), abs=1e-3)
    assert record["gain_db"] == pytest.approx(record["val_psnr"] - 30.5, abs=1e-3)
    assert record["val_psnr"] > max(record["val_psnr_models"]) + 3  # the bias cancels


def test_no_zero_shot_ensemble_from_one_start_above_bicubic_or_one_that_would_take_too_long(tmp_path):
    one = [{"name": "a", "source": "a.pth", "psnr0": 30.0, "val_seconds": 1.0},
           {"name": "b", "source": "b.pth", "psnr0": 24.0, "val_seconds": 1.0}]
    assert zero_shot_ensemble(_run(tmp_path), one, [], bicubic=25.0) == {
        "why": "1 start(s) scored above bicubic at step 0; an ensemble needs two"}
    slow = [{**c, "psnr0": 30.0, "val_seconds": 3.0} for c in one] * MEMBERS  # only MEMBERS count
    record = zero_shot_ensemble(_run(tmp_path, budget=100.0), slow, [], bicubic=25.0)
    assert set(record) == {"why"} and record["why"].startswith("validating it would take ~9 s, over 5%")
    assert 3.0 * MEMBERS > SHARE * 100.0


def _end_run(tmp_path: Path, left: float, zero: dict) -> SimpleNamespace:
    """A run at the end: two starts at 2 s/MP (the end's precision bf16, which one runs in),
    test 1.5 MP, ``left`` seconds of budget left."""
    candidates = [{"name": "a", "seconds_per_mp": 2.0, "dtypes": ["fp32", "bf16"]},
                  {"name": "b", "seconds_per_mp": 2.0, "dtypes": ["fp32"]}]
    phases = {"check": {"test_megapixels": 1.5},
              "candidates": {"candidates": candidates, "zero_shot": zero,
                             "precision": {"dtype": "bf16", "speed_ratio": 1.0}}}
    return SimpleNamespace(journal=Journal(tmp_path / "auto.json", {"phases": phases}), clock=Clock(left),
                           end_speed=1.0, test_per_mp={}, say=lambda _: None)


ZERO = {"members": ["a", "b"], "sources": ["a.pth", "b.pth"], "weights": [0.6, 0.4], "val_psnr": 27.0,
        "val_psnr_models": [26.5, 26.2], "gain_db": 0.5}
END = {"models": ["arms/a-full/best.safetensors"], "val_psnr": 26.8, "bicubic_psnr": 25.0,
       "weights": [1.0], "refine": {"keep": True}}


def test_the_end_takes_the_zero_shot_ensemble_only_where_it_scores_higher_and_its_test_pass_fits(tmp_path):
    """Its test pass: 1.1 x (2 + 2 s/MP) x 1.5 MP x 4 flips = 26.4 s."""
    chosen = prefer_zero_shot(_end_run(tmp_path, 30.0, ZERO), END, 4)
    assert chosen["models"] == ["a.pth", "b.pth"] and chosen["weights"] == [0.6, 0.4]
    assert chosen["val_psnr"] == 27.0 and chosen["self_ensemble"] == 4 and not chosen["refine"]["keep"]
    assert chosen["dtype"] == "fp32"  # b does not run in bf16
    assert chosen["zero_shot"] == {"val_psnr": 27.0, "keep": True, "why": "over the end's 26.800 dB",
                                   "instead_of": {"models": END["models"], "val_psnr": 26.8}}
    short = prefer_zero_shot(_end_run(tmp_path, 25.0, ZERO), END, 4)
    assert {k: v for k, v in short.items() if k != "zero_shot"} == END
    assert short["zero_shot"]["keep"] is False
    assert short["zero_shot"]["why"].startswith("its test pass would take ~26 s of the 2")
    lower = prefer_zero_shot(_end_run(tmp_path, 1e6, {**ZERO, "val_psnr": 26.8}), END, 4)
    assert lower["models"] == END["models"] and lower["zero_shot"] == {
        "val_psnr": 26.8, "keep": False, "why": "under the end's 26.800 dB on validation"}
    none = prefer_zero_shot(_end_run(tmp_path, 1e6, {"why": "one start"}), END, 4)
    assert none is END


def test_the_decisions_page_shows_the_zero_shot_ensemble_and_what_it_replaced(tmp_path):
    chosen = prefer_zero_shot(_end_run(tmp_path, 30.0, ZERO), END, 1)
    submit = {"images": 2, "folder": "f", "zip": "z", "predict_seconds": 0.1, "seconds": 0.1}
    record = {"phases": {"candidates": {"zero_shot": ZERO}, "end": chosen, "submit": submit},
              "spent": 1.0, "options": {"budget": 2.0}}
    page = write_report(record, tmp_path).read_text()
    assert "Zero-shot ensemble (no training) of a (0.60), b (0.40): 27.000 dB on validation, " \
           "+0.500 dB over the best of them" in page
    assert "<b>The submission is the zero-shot ensemble</b> of the starts as published (27.000 dB " \
           "on validation): the trained end's a-full scored 26.8 dB" in page
    assert "predicted in 0 s by a weighted ensemble of a (0.60), b (0.40)" in page
    record["phases"]["end"] = prefer_zero_shot(_end_run(tmp_path, 1e6, {**ZERO, "val_psnr": 26.0}), END, 1)
    record["phases"]["candidates"]["zero_shot"] = {"why": "one start"}
    page = html.unescape(write_report(record, tmp_path).read_text())
    assert "No zero-shot ensemble: one start." in page
    assert "The zero-shot ensemble (26.000 dB) was not used: under the end's 26.800 dB" in page


def test_where_nothing_trains_the_zero_shot_ensemble_predicts_the_test_set(tmp_path, biased, monkeypatch):
    """No start leaves time to train (``END_SHARE`` 0): the two biased starts, voted, beat either
    alone on validation, and the submission is their fusion with the fitted weights, as computed
    here from each start's own output."""
    data = make_recipe_set(tmp_path / "data")
    patch_in(monkeypatch, "END_SHARE", 0.0, auto_starts, auto_probes)
    monkeypatch.setattr(auto_precision, "BACKEND_GAIN", 1e6)  # PyTorch fp32 runs the end
    monkeypatch.setattr(auto_precision, "PRECISION_DB", -1.0)
    real = zero_shot_ensemble  # (on this tiny set, nearest-neighbour starts stay under bicubic)
    monkeypatch.setattr(auto_starts, "zero_shot_ensemble",
                        lambda run, scored, files, _: real(run, scored, files, -math.inf))
    score = auto_starts.score_candidates
    monkeypatch.setattr(auto_driver, "score_candidates", lambda run: {**score(run), "bicubic_psnr": 0.0})
    options = AutoOptions(40, device="cpu", pretrained=(), candidates=tuple(map(str, biased)),
                          cache_dir=str(tmp_path / "cache"), progress=False)
    result = run_auto(data, tmp_path / "run", options, say=lambda _: None)
    phases = result.record["phases"]
    zero, end = phases["candidates"]["zero_shot"], phases["end"]
    assert sorted(zero["members"]) == ["bright", "dark"] and end["zero_shot"]["keep"]
    assert end["models"] == zero["sources"] and end["weights"] == zero["weights"]
    assert end["zero_shot"]["instead_of"]["models"] == [str(biased[0])] or \
        end["zero_shot"]["instead_of"]["models"] == [str(biased[1])]
    assert end["dtype"] == "fp32" and phases["candidates"]["end_backend"]["backend"] == "torch"
    for lr_path in sorted((data / "test" / "lr").iterdir()):
        lr = images.read_image(lr_path)
        outs = [Upscaler(src, InferenceOptions(backend="torch", dtype="fp32", tile=0)).upscale_float(
            rgb_input(lr, lr_path)) for src in end["models"]]
        fused = sum(w * o for w, o in zip(end["weights"], outs))
        expected = np.clip(np.round(fused * 255), 0, 255).astype(np.uint8)
        got = images.read_image(result.submission / lr_path.name)
        assert np.abs(got.astype(int) - expected).max() <= 1, lr_path.name
    assert "The submission is the zero-shot ensemble" in (tmp_path / "run" / "report.html").read_text()
