"""A training step that cannot fit in memory is refused before the first step, naming
``train.batch_size`` and ``data.crop``; the estimate is a lower bound of what autograd keeps."""

from __future__ import annotations

import pytest
import torch

from helpers import make_competition
from upres.cli import main
from upres.models.registry import build_model
from upres.training import fits
from upres.training.fits import activation_elements, meta_model

TINY = {"num_feat": 8, "num_grow_ch": 4, "num_block": 1, "scale": 4}


@pytest.mark.parametrize("arch, hparams", [("RRDBNet", TINY), ("IMDN", {"nf": 32, "num_modules": 2})])
def test_the_estimate_is_under_what_autograd_keeps_and_of_its_order(arch, hparams):
    """Counted on the meta device, against the bytes autograd saves for the backward pass of a
    real forward at the same size (``saved_tensors_hooks``): under it, and at least a third."""
    from upres.models.registry import hyperparameters

    full = hyperparameters(arch, 4, None) if arch == "IMDN" else {}
    params = {**full, **hparams}
    counted = activation_elements(meta_model(arch, params), 16, 3)
    model = build_model(arch, params)
    saved = []

    def pack(t):
        saved.append(t.numel() if t.requires_grad or t.grad_fn is not None else 0)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.rand(1, 3, 16, 16)).mean().backward()
    assert counted is not None and sum(saved) / 3 <= counted <= sum(saved)


def test_a_batch_that_cannot_fit_is_refused_before_the_first_step(tmp_path, monkeypatch, capsys):
    comp = make_competition(tmp_path / "comp", train_size=96, val_size=48)
    monkeypatch.setattr(fits, "available_memory", lambda: 64 * 2**20)  # 64 MiB
    args = ["train", "smoke-cpu", "--data", str(comp), "--run-dir", str(tmp_path / "run"), "--quiet",
            "model.num_feat=8", "model.num_grow_ch=4", "model.num_block=1", "data.crop=32",
            "data.workers=0", f"data.cache_dir={tmp_path / 'cache'}", "train.iterations=2"]
    assert main([*args, "train.batch_size=20000"]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size 20000 with data.crop 32: a training step needs at least " in err
    assert "GiB available; set train.batch_size=" in err
    suggested = int(err.split("set train.batch_size=")[1].split()[0])
    assert not (tmp_path / "run").exists()  # refused before anything was written
    assert 1 <= suggested < 20000 and main([*args, f"train.batch_size={min(suggested, 4)}"]) == 0
