"""``auto`` fills its budget: a final whose planned steps run out early trains on at the speed it
logged; a run that still ends with over 5% unused says why; the decisions page names the
winning start, how it was trained and the scores that chose it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from helpers import FakeClock, patch_in
from upres.auto import arms as auto_arms
from upres.auto import ending as auto_ending
from upres.auto import final as auto_final
from upres.auto import halving as auto_halving
from upres.auto import levers as auto_levers
from upres.auto import probes as auto_probes
from upres.auto import starts as auto_starts
from upres.auto.ending import UNUSED_SHARE, unused_budget
from upres.auto.final import FINAL_OVERSHOOT, PROBE_OVERSHOOT, run_final
from upres.auto.journal import Journal
from upres.auto.report import write_report


def test_a_final_planned_from_a_slow_probe_trains_on_until_its_time_is_spent(tmp_path, monkeypatch):
    """The probe timed 2 s a step (a load spike); the steps run at 0.5 s. The plan (1.25 x 500
    steps) is done in 312.5 of 1000 s; the final trains on at its logged speed until the time
    ends it, using all of it."""
    clock, folder, calls = FakeClock(1000.0), tmp_path / "run" / "arms" / "a-full", []
    folder.mkdir(parents=True)

    def fake_train(run, arm, seconds, iterations):
        records = [json.loads(line) for line in (folder / "metrics.jsonl").open()] \
            if (folder / "metrics.jsonl").exists() else []
        step = max((r["step"] for r in records), default=0)
        done = min(iterations - step, int(seconds * 2))  # 2 steps a second, stopped by steps or time
        clock.now += done / 2
        with (folder / "metrics.jsonl").open("a") as out:
            out.write(json.dumps({"step": step + done, "it_per_s": 2.0}) + "\n")
        calls.append((round(seconds, 1), iterations, step + done))

    patch_in(monkeypatch, "reserve_after_training", lambda *_, **__: 0.0,
             auto_starts, auto_probes, auto_levers, auto_final)
    patch_in(monkeypatch, "training_val_seconds", lambda *_: 0.0, auto_arms, auto_final)
    monkeypatch.setattr(auto_final, "time_on_test_image", lambda *_: None)
    patch_in(monkeypatch, "train_arm", fake_train, auto_halving, auto_final)
    patch_in(monkeypatch, "kept_transforms", lambda _: 1, auto_final, auto_ending)
    phases = {"halving": {"winner": "a-full"}, "levers": {"ensemble": {"keep": False}},
              "probes": {"arms": [{"name": "a-full", "variant": "full", "seconds_per_step": 2.0}]}}
    run = SimpleNamespace(journal=Journal(tmp_path / "auto.json", {"phases": phases}),
                          shard=SimpleNamespace(main=True, broadcast=lambda x: x), clock=clock,
                          out=tmp_path / "run", say=lambda _: None, test_per_mp={})
    run_final(run)
    planned = int(PROBE_OVERSHOOT * 500)
    assert calls[0] == (1000.0, planned, planned)  # the plan's steps ran out at 312.5 s
    left = 1000.0 - planned / 2
    assert calls[1] == (left, planned + int(FINAL_OVERSHOOT * left * 2), planned + int(left * 2))
    assert len(calls) == 2 and clock.left() == pytest.approx(0.0, abs=0.5)  # the time ended it
    assert phases["final"]["extended"] == [{"from_step": planned, "iterations": calls[1][1],
                                            "seconds": left}]


def test_a_final_stopped_by_its_time_is_not_extended(tmp_path, monkeypatch):
    clock = FakeClock(1000.0)
    calls = []

    def fake_train(run, arm, seconds, iterations):
        clock.now += seconds  # the time, not the steps, ended it
        calls.append(iterations)

    patch_in(monkeypatch, "train_arm", fake_train, auto_halving, auto_final)
    monkeypatch.setattr(auto_final, "training_val_seconds", lambda *_: 0.0)
    run = SimpleNamespace(clock=clock, shard=SimpleNamespace(broadcast=lambda x: x),
                          out=tmp_path, say=lambda _: None)
    auto_final.fill_budget(run, {"name": "a"}, 0.0, record := {})
    assert calls == [] and record == {}  # no metrics: no speed to plan from
    (tmp_path / "arms" / "a").mkdir(parents=True)
    (tmp_path / "arms" / "a" / "metrics.jsonl").write_text('{"step": 5, "it_per_s": 1.0}\n')
    clock.now = 990.0  # 1% of the budget left
    auto_final.fill_budget(run, {"name": "a"}, 0.0, record)
    assert calls == [] and record == {}


def _record(budget: float, final: dict, probes: dict | None = None) -> dict:
    return {"options": {"budget": budget}, "phases": {"final": final, "probes": probes or {}}}


def test_a_run_that_leaves_over_five_percent_unused_says_why():
    final = {"began": 100.0, "seconds": 700.0, "reserve_seconds": 180.0}
    assert unused_budget(_record(1000, final), 1000 * (1 - UNUSED_SHARE) + 1) is None
    over = unused_budget(_record(1000, final), 860.0)  # the end took 60 s of 180 reserved
    assert over == {"seconds": 140.0, "share": 0.14, "why": "the end took 60 s of the 180 s reserved "
                    "for it (its cost is estimated from validation and test-image timings)"}
    early = unused_budget(_record(1000, {"began": 100.0, "seconds": 500.0, "reserve_seconds": 110.0}),
                          700.0)
    assert early["why"].startswith("the final stopped before its time")
    assert "bicubic" in unused_budget(_record(1000, {}, {"bicubic": "too slow"}), 300.0)["why"]
    assert "does not train" in unused_budget(_record(1000, {"untrained": True}), 300.0)["why"]


def test_the_decisions_page_names_the_winning_start_and_what_chose_it(tmp_path):
    arms = [{"name": "craft-x4-full", "source": "craft-x4", "psnr0": 25.7, "variant": "full", "lr": 1e-4,
             "crop": 64, "batch": 4, "seconds_per_step": 0.6, "steps_planned": 100},
            {"name": "realesrgan-x4plus-full", "source": "realesrgan-x4plus", "psnr0": 23.1,
             "variant": "full", "lr": 1e-4, "crop": 64, "batch": 4, "seconds_per_step": 3.0,
             "steps_planned": 20}]
    record = {"options": {"budget": 600.0}, "spent": 500.0, "total_seconds": 500.0,
              "unused": {"seconds": 100.0, "share": 0.17, "why": "the end took 10 s of the 90 s reserved"},
              "phases": {"probes": {"arms": arms},
                         "halving": {"winner": "craft-x4-full", "rounds": [
                             {"seconds": 60, "kept": ["craft-x4-full"],
                              "psnr": {"craft-x4-full": 25.9, "realesrgan-x4plus-full": 24.2}}]},
                         "final": {"planned_seconds": 200, "iterations": 300, "psnr": 26.0,
                                   "extended": [{"from_step": 300, "iterations": 500, "seconds": 120.0}]}}}
    page = write_report(record, tmp_path).read_text()
    assert ("The winning start: <b>craft-x4</b> (published, trained for PSNR; step-0 validation PSNR "
            "25.7 dB), the highest in the last halving round (craft-x4-full 25.900, "
            "realesrgan-x4plus-full 24.200 dB).") in page
    assert "Its steps ran out with 2.0 min left: trained on to step 500." in page
    assert "1.7 min unused: the end took 10 s of the 90 s reserved" in page
