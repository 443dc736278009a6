import csv
import json

import numpy as np
import pytest
import yaml

from helpers import make_competition
from upres.cli import main
from upres.errors import ConfigError
from upres.training import experiment
from upres.training.config import load_config, load_plan
from upres.training.experiment import PlanClock, arm_config


def write_plan(tmp_path, comp):
    plan = {
        "base": "smoke-cpu",
        "data": str(comp),
        "iterations": 4,
        "val_every": 2,
        "overrides": {"model.num_feat": 8, "model.num_grow_ch": 4, "model.num_block": 1,
                      "data.crop": 32, "data.workers": 0, "train.batch_size": 2,
                      "train.log_every": 1, "data.cache_dir": str(tmp_path / "cache")},
        "arms": [{"name": "base"},
                 {"name": "rot", "overrides": {"model.rotation": True}}],
    }
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def test_two_arm_plan_writes_table_and_plot(tmp_path, capsys):
    comp = make_competition(tmp_path / "comp")
    plan = write_plan(tmp_path, comp)
    out = tmp_path / "out"
    assert main(["experiment", str(plan), "--out", str(out), "--quiet"]) == 0
    rows = list(csv.reader((out / "results" / "table.csv").open()))
    assert rows[0] == ["arm", "psnr@2", "psnr@4", "it/s", "slow-down vs base", "init"]
    assert [r[0] for r in rows[1:]] == ["base", "rot", "(bicubic)"]
    rates = {}
    for row in rows[1:3]:
        records = [json.loads(x) for x in (out / "arms" / row[0] / "metrics.jsonl").read_text().splitlines()]
        psnr = {r["step"]: r["val_psnr"] for r in records if "val_psnr" in r}
        assert [float(v) for v in row[1:3]] == [round(psnr[2], 3), round(psnr[4], 3)]
        speeds = [r["it_per_s"] for r in records if "it_per_s" in r]
        rates[row[0]] = float(np.median(speeds[1:]))  # the first window is warm-up
        assert float(row[3]) == pytest.approx(rates[row[0]], abs=0.006)
    assert rows[1][4] == "1.00x"
    assert rows[2][4] == f"{rates['base'] / rates['rot']:.2f}x"
    bicubic = [json.loads(x) for x in (out / "arms/base/metrics.jsonl").read_text().splitlines()
               if "bicubic_psnr" in x][0]["bicubic_psnr"]
    assert rows[3][1:3] == [f"{bicubic:.3f}"] * 2
    assert "| base |" in (out / "results" / "table.md").read_text()
    assert (out / "results" / "psnr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = (out / "results" / "index.html").read_text()
    assert "href='../arms/base/report.html'" in index and "data:image/png;base64," in index
    assert (out / "arms" / "base" / "report.html").exists()
    assert load_config(out / "arms/rot/config.yaml").model.params["rotation"] is True
    capsys.readouterr()
    # resumable arm by arm: finished arms are kept, not retrained; without --resume: refused
    assert main(["experiment", str(plan), "--out", str(out), "--quiet"]) == 2
    assert "holds an experiment; pass --resume" in capsys.readouterr().err
    assert main(["experiment", str(plan), "--out", str(out), "--quiet", "--resume"]) == 0
    assert capsys.readouterr().out.count("finished earlier, kept") == 2


def test_shipped_plans_validate():
    from upres.training.config import shipped_configs

    plans = [n for n, p in shipped_configs().items() if p.parent.name == "experiments"]
    assert {"seed-ablation-cpu", "recipe-comparison", "arch-zoo-cpu", "arch-zoo-gpu"} <= set(plans)
    for name in plans:
        plan = load_plan(name)
        for arm in plan.arms:
            arm_config(plan, arm, "/data")  # every arm's config passes the schema


def test_bad_plan_is_named(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("base: smoke-cpu\niterations: 2\nval_every: 1\narms: [{name: a, overides: {}}]\n")
    with pytest.raises(ConfigError, match=r"(?s)p.yaml: invalid plan.*arms.0.overides: unknown key; "
                       r"did you mean 'arms.0.overrides'"):
        load_plan(path)


def test_a_bad_arm_fails_before_any_arm_trains(tmp_path):
    from upres.training.experiment import run_plan

    path = tmp_path / "p.yaml"
    path.write_text("base: smoke-cpu\niterations: 2\nval_every: 1\narms: [{name: a}, "
                    "{name: b, overrides: {model.preset: span}}]\n")
    with pytest.raises(ConfigError, match="model.preset: span is a SPAN, not a RRDBNet"):
        run_plan(load_plan(path), tmp_path / "out", str(tmp_path / "nodata"))
    assert not (tmp_path / "out" / "arms").exists()


def test_plan_clock_says_the_eta_and_warns_past_a_day(monkeypatch, capsys):
    now = [1000.0]
    monkeypatch.setattr(experiment.time, "monotonic", lambda: now[0])
    plan = load_plan("arch-zoo-cpu")  # 5 arms of 3m
    clock = PlanClock(5, plan)
    assert capsys.readouterr().out.strip() == "plan: 5 arms of 3m each, ~15m of training"
    now[0] += 1.0  # an arm kept from an earlier run: no pace from it
    clock.arm_done()
    assert capsys.readouterr().out == ""
    now[0] += 240.0
    clock.arm_done()  # 4 min a trained arm, 3 left
    assert capsys.readouterr().out.strip() == "3 arm(s) left; ETA ~12m at the pace so far"
    now[0] += 20 * 3600.0  # (240 + 72000) / 2 a trained arm, 2 left: ~20h04m
    clock.arm_done()
    out = capsys.readouterr().out
    assert "2 arm(s) left; ETA ~20h04m" in out and "warning" not in out
    now[0] += 60 * 3600.0
    clock.arm_done()  # (240 + 72000 + 216000) / 3 = 26.7 h for the last arm
    assert "warning: the plan needs ~27 more hours on this device" in capsys.readouterr().out
