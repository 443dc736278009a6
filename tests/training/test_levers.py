"""The fine-tuning levers: warmup and schedules, freezing with a schedule that unfreezes,
group-balanced sampling, precision auto, and the learning-rate range test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import make_competition, tiny_rrdbnet
from upres.cli import main
from upres.errors import ConfigError
from upres.inference import devices
from upres.inference.torch_backend import resolve_dtype
from upres.io.loading import load_model, save_model
from upres.io.pairs import Pair
from upres.training.config import load_config
from upres.training.data import CropDataset
from upres.training.loop import apply_freezing, train
from upres.training.lr_find import range_test, suggest

TINY = ["model.num_feat=8", "model.num_grow_ch=4", "model.num_block=2", "data.crop=32",
        "data.workers=0", "train.batch_size=2", "train.log_every=1", "train.val_every=1000"]


@pytest.fixture(scope="module")
def comp(tmp_path_factory):
    return make_competition(tmp_path_factory.mktemp("comp"), train_size=96, val_size=48)


def test_warmup_then_cosine_matches_torch_and_multistep_counts_milestones():
    tc = load_config(None, ["train.iterations=100", "train.scheduler=cosine", "train.lr=1e-3",
                            "train.min_lr=1e-5", "train.warmup=0.1"]).train
    assert [tc.lr_factor(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=90, eta_min=1e-5)
    expected = []
    for _ in range(91):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        reference.step()
    ours = [1e-3 * tc.lr_factor(10 + s) for s in range(91)]
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12)
    steps = load_config(None, ["train.milestones=[5, 8]", "train.gamma=0.5"]).train
    assert [steps.lr_factor(s) for s in (0, 4, 5, 7, 8, 100)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


def test_freezing_schedule_keeps_frozen_weights_and_unfreezes_on_time(comp, tmp_path):
    """Tail first: the head and the first block stay bit for bit until the stage, then train."""
    base = [*TINY, f"data.root={comp}", f"data.cache_dir={tmp_path / 'cache'}", "train.ema=0",
            "train.freeze=[conv_first, 'body\\.0\\.']"]
    cfg = load_config(None, [*base, "train.iterations=4"])
    torch.manual_seed(0)
    start = tiny_rrdbnet(num_block=2)
    save_model(start, tmp_path / "start.safetensors")
    init = [f"init.source={tmp_path / 'start.safetensors'}"]
    train(load_config(None, [*base, *init, "train.iterations=4"]), tmp_path / "frozen", progress=False)
    after = load_model(tmp_path / "frozen" / "last.safetensors").state_dict()
    for name, value in start.state_dict().items():
        frozen = name.startswith(("conv_first", "body.0."))
        assert torch.equal(after[name], value) == frozen, name
    assert cfg.train.trains("body.1.rdb1.conv1.weight", 0) and not cfg.train.trains("conv_first.bias", 0)
    staged = load_config(None, [*base, *init, "train.iterations=4",
                                "train.unfreeze=[{at: 2, params: [.]}]"])
    assert apply_freezing(start, staged.train, 1) is True  # the head freezes
    assert not start.conv_first.weight.requires_grad and start.conv_last.weight.requires_grad
    assert apply_freezing(start, staged.train, 1) is False  # nothing new at the same step
    assert apply_freezing(start, staged.train, 2) is True and start.conv_first.weight.requires_grad
    train(staged, tmp_path / "staged", progress=False)
    trained = load_model(tmp_path / "staged" / "last.safetensors").state_dict()
    assert not torch.equal(trained["conv_first.weight"], start.state_dict()["conv_first.weight"])


def test_bad_freeze_pattern_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train.freeze: 'body\[' is not a regular expression"):
        load_config(None, ["train.freeze=['body[']"])
    with pytest.raises(ConfigError, match="data.balance needs data.fingerprint"):
        load_config(None, ["data.balance=groups"])


def test_group_balanced_sampling_draws_every_group_equally():
    class FakeCache:
        pairs = [Pair(str(i), None, None) for i in range(10)]

    groups = [0] * 8 + [1, 2]  # one common recipe, two rare ones
    data = CropDataset(FakeCache(), list(range(10)), 16, 4, seed=3, groups=groups)
    counts = np.bincount([groups[data._pair_index(n)] for n in range(6000)], minlength=3)
    np.testing.assert_allclose(counts / 6000, [1 / 3] * 3, atol=0.03)
    plain = CropDataset(FakeCache(), list(range(10)), 16, 4, seed=3)
    assert np.bincount([groups[plain._pair_index(n)] for n in range(1000)])[0] == 800


def test_precision_auto_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(devices, "cpu_has_fast_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") == torch.bfloat16


def test_suggestion_is_a_third_of_the_smoothed_minimum():
    lrs = list(np.geomspace(1e-6, 1e-2, 41))
    losses = [1.0 - 0.1 * np.log10(lr / 1e-6) if lr < 1e-3 else 5.0 for lr in lrs]
    assert suggest(lrs, losses) == pytest.approx(lrs[int(np.argmin(losses))] / 3)


def test_range_test_sweeps_geometrically_and_the_command_writes_its_curve(comp, tmp_path, capsys):
    cfg = load_config(None, [*TINY, f"data.root={comp}", f"data.cache_dir={tmp_path / 'c'}",
                             "train.iterations=3"])  # the sweep's length is its own, not training's
    result = range_test(cfg, tmp_path / "lrf", steps=12, low=1e-5, high=1e-1, progress=False)
    assert len(result.lrs) > 3  # more steps than train.iterations
    ratios = np.diff(np.log10(result.lrs))
    np.testing.assert_allclose(ratios, 4 / 11)  # 4 decades in 11 steps
    assert result.lrs[0] == pytest.approx(1e-5)
    assert 1e-5 / 3 <= result.suggestion <= 1e-1 and result.seconds_per_step > 0
    code = main(["lr-find", "smoke-cpu", "--data", str(comp), "--out", str(tmp_path / "out"),
                 "--steps", "8", "--quiet", *TINY, f"data.cache_dir={tmp_path / 'c'}"])
    assert code == 0
    saved = json.loads((tmp_path / "out" / "lr_find.json").read_text())
    assert len(saved["lrs"]) == len(saved["losses"]) >= 6
    assert (tmp_path / "out" / "lr_find.png").stat().st_size > 1000
    assert "suggested learning rate" in capsys.readouterr().out
