"""The one registry of families: RRDBNet and the spandrel families are uniform entries, so a new
family is one entry and nothing else changes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import make_competition
from upres.errors import ArchitectureError, ConfigError
from upres.inference.upscaler import Upscaler
from upres.io.loading import load_model
from upres.models import registry
from upres.models.rrdbnet import RRDBNet
from upres.training.config import load_config
from upres.training.loop import train


@pytest.fixture
def mosr():
    """spandrel's MoSR, which upres does not ship, added by one entry."""
    pytest.importorskip("spandrel")
    entry = registry.register(registry.spandrel_family(
        "MoSR", "MoSR:MoSR", "upscale", "dim", {}, "MoSR (spandrel)",
        {"mosr-test": registry.Preset({"dim": 8, "n_block": 1, "kernel_size": 3}, "a tiny MoSR")}))
    yield entry
    registry.unregister("MoSR")


def test_a_new_family_is_one_entry(mosr, tmp_path):
    """Config validation, training, validation, export, reload and upscaling all work for a
    family registered at run time, with no other code aware of it."""
    with pytest.raises(ConfigError, match=r"unknown MoSR hyperparameter; did you mean 'n_block'"):
        load_config(None, ["model.arch=MoSR", "model.params={n_blocks: 2}"])
    comp = make_competition(tmp_path / "comp", train_size=64, val_size=32)
    cfg = load_config(None, ["model.preset=mosr-test", "model.expansion_ratio=1.0", "data.crop=32",
                             "data.workers=0", "train.batch_size=2", "train.iterations=2",
                             "train.val_every=2", f"data.root={comp}",
                             f"data.cache_dir={tmp_path / 'cache'}"])
    assert cfg.model.arch == "MoSR" and cfg.model.hparams()["dim"] == 8
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.step == 2 and np.isfinite(result.best_psnr)
    model = load_model(tmp_path / "run" / "best.safetensors")
    assert type(model) is mosr.network() and registry.describe(model).arch == "MoSR"
    up = Upscaler(tmp_path / "run" / "best.safetensors", backend="torch", tile=0)
    assert up.upscale_array(np.full((12, 10, 3), 90, np.uint8)).shape == (48, 40, 3)
    metadata = json.loads(json.dumps(registry.describe(model).hparams))
    assert metadata["dim"] == 8 and metadata["expansion_ratio"] == 1.0


def test_rrdbnet_is_an_entry_like_the_others():
    entry = registry.get("RRDBNet")
    assert entry.network() is RRDBNet and entry.scale_key == "scale"
    assert registry.param_table("RRDBNet")["num_feat"] == {"type": "int", "default": 64}
    assert registry.hyperparameters("RRDBNet", 2, "rrdbnet-x4plus", {"num_block": 2}) == {
        "num_feat": 64, "num_block": 2, "num_grow_ch": 32, "scale": 2}
    with pytest.raises(ArchitectureError, match="registered already"):
        registry.register(entry)
    with pytest.raises(ArchitectureError, match="unknown architecture 'Nope'"):
        registry.build_model("Nope", {})


def test_detection_tries_own_detectors_then_spandrel():
    torch.manual_seed(0)
    sd = RRDBNet(num_feat=8, num_block=2, num_grow_ch=4, scale=2).state_dict()
    assert registry.detect_architecture(sd, "x") == ("RRDBNet", {
        "num_in_ch": 3, "num_out_ch": 3, "scale": 2, "num_feat": 8, "num_block": 2, "num_grow_ch": 4})
