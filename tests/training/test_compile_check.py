"""``train.compile`` trains the compiled network only once it matched eager on the first batch
(outputs and gradients), and trains eager, saying so, where it did not."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers import small_competition, train_tiny


@pytest.fixture(scope="module")
def comp(tmp_path_factory):
    return small_competition(tmp_path_factory.mktemp("comp"))


def _checks(run) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["compile_check"] for r in map(json.loads, lines) if "compile_check" in r]


def _train(comp, tmp_path, name: str, *extra: str) -> dict:
    run = tmp_path / name
    assert train_tiny(comp, run, tmp_path / "cache", "train.iterations=3", *extra) == 0
    return {"run": run, "weights": load_file(run / "last.safetensors")}


def test_a_compiled_step_that_matches_eager_trains_as_eager_does(comp, tmp_path):
    eager = _train(comp, tmp_path, "eager")
    compiled = _train(comp, tmp_path, "compiled", "train.compile=true")
    [check] = _checks(compiled["run"])
    assert check["ok"] and check["output_error"] <= 1e-3 and check["grad_error"] <= 1e-3
    assert _checks(eager["run"]) == []
    for key, tensor in eager["weights"].items():  # three Adam steps: the same weights
        torch.testing.assert_close(compiled["weights"][key], tensor, rtol=1e-3, atol=1e-5)


def test_a_compiled_network_that_differs_from_eager_is_not_trained(comp, tmp_path, monkeypatch,
                                                                  capsys):
    """The inductor ``freezing`` bug gave wrong RRDBNet outputs here: a compiled network whose
    output is off is named in the log and the run trains eager, bit for bit."""

    def wrong_compile(net, **kwargs):
        return lambda x: net(x) * 1.05

    eager = _train(comp, tmp_path, "eager")
    monkeypatch.setattr(torch, "compile", wrong_compile)
    fallen = _train(comp, tmp_path, "fallen", "train.compile=true")
    [check] = _checks(fallen["run"])
    assert not check["ok"] and check["output_error"] == pytest.approx(0.05, rel=1e-3)
    assert "the compiled network differs from eager on the first batch" in capsys.readouterr().out
    for key, tensor in eager["weights"].items():
        assert torch.equal(fallen["weights"][key], tensor), key
