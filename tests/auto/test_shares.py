"""Where ``auto``'s training time goes: the halving keeps the best arm of a start that began under
bicubic (a short round under-rates it), and the final shares its time between the ensemble's
members by what their fitted validation curves predict."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from helpers import FakeClock, patch_in
from upres.auto import arms as auto_arms
from upres.auto import final as auto_final
from upres.auto import halving as auto_halving
from upres.auto import levers as auto_levers
from upres.auto import probes as auto_probes
from upres.auto import starts as auto_starts
from upres.auto.final import run_final, share_final
from upres.auto.halving import kept_arms, run_halving
from upres.auto.journal import Journal
from upres.auto.report import _later_sections, write_report

BICUBIC = 22.79


def _arms(psnr0: dict[str, float | None]) -> dict[str, dict]:
    return {n: {"name": n, "psnr0": p} for n, p in psnr0.items()}


def test_the_best_arm_that_began_under_bicubic_takes_the_last_kept_place():
    arms = _arms({"imdn": 23.49, "rlfn": 23.54, "craft": 23.63, "span": 23.46, "realsr": 21.73,
                  "x4plus": 22.12})
    ranked = ["craft", "imdn", "rlfn", "span", "realsr", "x4plus"]  # by the round's validation
    assert kept_arms(ranked, arms, BICUBIC) == (["craft", "imdn", "realsr"], "realsr")
    # one kept already: nothing replaced
    assert kept_arms(["craft", "x4plus", "imdn", "realsr"], arms, BICUBIC) == (["craft", "x4plus"], None)
    # the last round keeps one: the better arm wins, whatever its start
    assert kept_arms(["craft", "realsr"], arms, BICUBIC) == (["craft"], None)
    # every start under bicubic (GAN starts only), or none: the plain better half
    gan = _arms({"realsr": 21.73, "x4plus": 22.12, "anime": 21.60})
    assert kept_arms(["x4plus", "realsr", "anime"], gan, BICUBIC) == (["x4plus", "realsr"], None)
    assert kept_arms(["craft", "imdn", "rlfn"], arms, BICUBIC) == (["craft", "imdn"], None)
    # a preset from scratch has no step-0 score: not protected
    scratch = _arms({"a": 23.6, "b": 23.5, "c": 23.4, "s": None})
    assert kept_arms(["a", "b", "c", "s"], scratch, BICUBIC) == (["a", "b"], None)


def test_the_halving_carries_a_start_that_must_unlearn_to_its_last_round(tmp_path, monkeypatch):
    """Four PSNR starts and RealSR, which scores last after every round but the last: it is kept
    in place of the worst of the better half, the rounds say so, and it wins the last round."""
    scores = {"a": [23.60, 23.62, 23.63], "b": [23.55, 23.61, 23.62], "c": [23.50, 23.58, 23.55],
              "d": [23.40, 23.50, 23.50], "realsr": [23.30, 23.57, 23.70]}
    psnr0 = {"a": 23.4, "b": 23.3, "c": 23.3, "d": 23.2, "realsr": 21.7}
    trained: dict[str, int] = {}

    def fake_train(run, arm, *_, **__):
        trained[arm["name"]] = trained.get(arm["name"], 0) + 1

    monkeypatch.setattr(auto_halving, "train_arm", fake_train)
    monkeypatch.setattr(auto_halving, "arm_psnr",
                        lambda run, name: (scores[name][trained[name] - 1], trained[name]))
    monkeypatch.setattr(auto_halving, "horizon", lambda arm: 100)
    phases = {"probes": {"arms": [{"name": n, "psnr0": p} for n, p in psnr0.items()],
                         "training_seconds": 1000.0},
              "candidates": {"bicubic_psnr": BICUBIC}}
    run = SimpleNamespace(journal=Journal(tmp_path / "auto.json", {"phases": phases}),
                          shard=SimpleNamespace(main=True, broadcast=lambda x: x),
                          clock=FakeClock(1000.0), say=lambda _: None)
    run_halving(run)
    rounds = phases["halving"]["rounds"]
    assert [r["kept"] for r in rounds] == [["a", "b", "realsr"], ["a", "realsr"], ["realsr"]]
    assert [r.get("kept_unlearning") for r in rounds] == ["realsr", "realsr", None]
    assert phases["halving"]["winner"] == "realsr" and phases["halving"]["runner_up"] == "a"
    assert trained == {"a": 3, "b": 2, "c": 1, "d": 1, "realsr": 3}
    page = "".join(_later_sections({"phases": {"halving": phases["halving"]}}))
    assert page.count("kept: began under bicubic, still unlearning") == 2  # rounds 1 and 2


def _gain(members: list[dict], t: list[float]) -> float:
    return sum(m["weight"] * m["slope"] * math.log(1 + m["rate"] * s / max(m["step"], 1))
               for m, s in zip(members, t))


@pytest.mark.parametrize("runner_slope", [0.12, 0.03, 0.0])
def test_the_final_s_shares_maximize_the_gain_the_fitted_curves_predict(runner_slope):
    """Against a brute-force search over the split of 650 s in 1 s steps."""
    members = [{"slope": 0.0617, "weight": 0.51, "step": 400, "rate": 1.66},
               {"slope": runner_slope, "weight": 0.49, "step": 327, "rate": 1.36}]
    t = share_final(650.0, members)
    assert sum(t) == pytest.approx(650.0) and min(t) >= 0
    grid = np.arange(0.0, 651.0)
    best = grid[int(np.argmax([_gain(members, [650 - x, x]) for x in grid]))]
    assert t[1] == pytest.approx(best, abs=1.0)
    assert _gain(members, t) >= _gain(members, [650 - best, best]) - 1e-9
    # a winner whose validation levelled off gives the runner-up all; no slope at all: the winner
    plateau = [{**members[0], "slope": 0.0}, {**members[1], "slope": 0.05}]
    assert share_final(650.0, plateau) == [0.0, 650.0]
    assert share_final(650.0, [{**m, "slope": 0.0} for m in members]) == [650.0, 0.0]


def _metrics(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


ARM = {"variant": "full", "lr": 2e-4, "crop": 64, "batch": 8, "steps_planned": 500}


def _final_run(tmp_path, clock, keep: bool, winner_rows, runner_rows):
    out = tmp_path / "run"
    _metrics(out / "arms" / "w-full", winner_rows)
    _metrics(out / "arms" / "r-full", runner_rows)
    phases = {"halving": {"winner": "w-full", "runner_up": "r-full", "rounds": []},
              "levers": {"ensemble": {"keep": keep, "weights": [0.5, 0.5]}},
              "probes": {"arms": [{**ARM, "name": "w-full", "seconds_per_step": 0.5},
                                  {**ARM, "name": "r-full", "seconds_per_step": 1.0}]}}
    return SimpleNamespace(journal=Journal(tmp_path / "auto.json", {"phases": phases}),
                           shard=SimpleNamespace(main=True, broadcast=lambda x: x), clock=clock,
                           out=out, say=lambda _: None, test_per_mp={}), phases


def _levelled_winner(monkeypatch):
    """A final whose training is faked (each call advances the clock by its seconds and is
    listed), with the metrics of a winner levelled off from step 100 to 400 and a runner-up
    still rising at step 100."""
    clock, calls = FakeClock(1000.0), []

    def fake_train(run, arm, seconds, iterations):
        clock.now += seconds
        calls.append((arm["name"], round(seconds, 1), iterations))

    patch_in(monkeypatch, "reserve_after_training", lambda *_, **__: 0.0,
             auto_starts, auto_probes, auto_levers, auto_final)
    patch_in(monkeypatch, "training_val_seconds", lambda *_: 0.0, auto_arms, auto_final)
    monkeypatch.setattr(auto_final, "time_on_test_image", lambda *_: None)
    patch_in(monkeypatch, "train_arm", fake_train, auto_halving, auto_final)
    monkeypatch.setattr(auto_final, "kept_transforms", lambda _: 1)
    winner = [{"step": 400, "it_per_s": 2.0}] + [{"step": s, "val_psnr": 23.80} for s in (100, 200, 400)]
    runner = [{"step": 100, "it_per_s": 1.0}] + [{"step": s, "val_psnr": p}
                                                 for s, p in ((10, 23.3), (50, 23.6), (100, 23.7))]
    return clock, calls, winner, runner


def test_the_runner_up_trains_its_share_then_the_winner_the_rest(tmp_path, monkeypatch):
    """The winner's validation levelled off (steps 100 to 400), the runner-up's rises: the
    runner-up trains first, for the seconds ``share_final`` gives it, the winner the rest; the
    page says so. Without the ensemble the winner trains it all, and the page says why."""
    clock, calls, winner, runner = _levelled_winner(monkeypatch)
    run, phases = _final_run(tmp_path, clock, True, winner, runner)
    run_final(run)
    plan = phases["final"]["runner_up"]
    assert plan["curves"][0]["slope"] == 0.0 and plan["curves"][1]["slope"] > 0.1
    assert plan["seconds"] == 1000.0  # a levelled-off winner: all of it
    assert calls == [("r-full", 1000.0, 100 + int(auto_final.FINAL_OVERSHOOT * 1000))]
    assert plan["psnr"] == 23.7 and plan["reached_step"] == 100  # as its metrics say
    write_report({"phases": phases, "options": {"budget": 1000}, "spent": 1000.0}, tmp_path / "run")
    page = (tmp_path / "run" / "report.html").read_text()
    assert "The runner-up <b>r-full</b> trained 16.7 min of the final" in page

    calls.clear()
    clock.now = 0.0
    run, phases = _final_run(tmp_path / "b", clock, False, winner, runner)
    run_final(run)
    assert [c[0] for c in calls] == ["w-full"] and calls[0][1] == 1000.0
    assert phases["final"]["runner_up"] == {"why": "no ensemble with the runner-up"}
    write_report({"phases": phases, "options": {"budget": 1000}, "spent": 1000.0}, tmp_path / "b" / "run")
    assert ("The runner-up did not train in the final: no ensemble with the runner-up"
            in (tmp_path / "b" / "run" / "report.html").read_text())


def _checkpoint(folder, step: int) -> None:
    """A checkpoint file named for ``step`` (its contents are not read here)."""
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    (folder / "checkpoints" / f"step_{step:09d}.pt").write_bytes(b"")


def test_a_resumed_final_trains_what_is_left_of_the_runner_up_s_share(tmp_path, monkeypatch):
    """Killed while the runner-up trained its 1000 s from step 100 at 1 step a second, with a
    checkpoint at step 400: resumed, it trains the 700 s left to the same end step, then the
    winner the rest; a share whose steps are all checkpointed trains 0 s more."""
    clock, calls, winner, runner = _levelled_winner(monkeypatch)
    run, phases = _final_run(tmp_path, clock, True, winner, runner)
    run_final(run)
    end_step = calls[0][2]
    plan = {k: v for k, v in phases["final"]["runner_up"].items()
            if k not in ("iterations", "psnr", "reached_step")}  # as journalled before it trained
    for checkpointed, left in ((400, 700.0), (100 + 2000, 0.0)):
        calls.clear()
        clock.now = 0.0
        run, phases = _final_run(tmp_path / str(checkpointed), clock, True, winner, runner)
        phases["final"] = {"began": 0.0, "specialist": {"groups": [], "why": "none led"},
                           "runner_up": dict(plan)}
        _checkpoint(run.out / "arms" / "r-full", checkpointed)
        run_final(run)
        assert calls[0] == ("r-full", left, end_step)
        assert phases["final"]["runner_up"]["psnr"] == 23.7


def test_a_resumed_specialist_trains_what_is_left_of_its_time(tmp_path, monkeypatch):
    """The specialist's plan is journalled before it trains; resumed with a checkpoint at step 50
    of a plan at 0.5 steps a second, it is given the planned seconds less 100."""
    budgets = []
    monkeypatch.setattr(auto_final, "arm_config", lambda run, arm, steps, seconds, extra: (steps, seconds))
    monkeypatch.setattr("upres.training.loop.train", lambda cfg, *_, **__: budgets.append(cfg))
    run, phases = _final_run(tmp_path, FakeClock(1000.0), True, [], [])
    run.options = SimpleNamespace(progress=False)
    plan = {"groups": [3], "of": "r-full", "share": 0.2, "planned_seconds": 180.0, "iterations": 99,
            "rate": 0.5, "name": "r-full-specialist"}
    assert auto_final.train_specialist(run, plan)["reached_step"] == 0
    _checkpoint(run.out / "arms" / "r-full-specialist", 50)
    auto_final.train_specialist(run, plan)
    assert budgets == [(99, 180.0), (99, 80.0)]
