import math

import pytest
import torch

from upres.arch import RRDBNet, build_model


def basicsr_keys(num_block: int) -> list[str]:
    """BasicSR's RRDBNet parameter names, written out independently of our module."""
    keys = ["conv_first"]
    for b in range(num_block):
        for r in (1, 2, 3):
            keys += [f"body.{b}.rdb{r}.conv{c}" for c in range(1, 6)]
    keys += ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
    return [f"{k}.{p}" for k in keys for p in ("weight", "bias")]


def test_parameter_names_and_shapes_match_basicsr():
    model = RRDBNet(num_in_ch=3, num_out_ch=3, scale=4, num_feat=64, num_block=2, num_grow_ch=32)
    sd = model.state_dict()
    assert list(sd) == basicsr_keys(2)
    assert sd["conv_first.weight"].shape == (64, 3, 3, 3)
    assert sd["body.1.rdb3.conv4.weight"].shape == (32, 64 + 3 * 32, 3, 3)
    assert sd["body.0.rdb2.conv5.weight"].shape == (64, 64 + 4 * 32, 3, 3)
    assert sd["conv_last.weight"].shape == (3, 64, 3, 3)


@pytest.mark.parametrize("scale, in_ch", [(4, 3), (2, 12), (1, 48)])
def test_scales_unshuffle_like_basicsr(scale, in_ch):
    model = RRDBNet(scale=scale, num_feat=8, num_block=1, num_grow_ch=4)
    assert model.conv_first.weight.shape[1] == in_ch
    y = model(torch.rand(2, 3, 8, 12))
    assert y.shape == (2, 3, 8 * scale, 12 * scale)


def test_records_hparams_and_rebuilds():
    model = RRDBNet(num_in_ch=1, num_out_ch=1, scale=2, num_feat=16, num_block=3, num_grow_ch=8)
    assert model.hparams == dict(num_in_ch=1, num_out_ch=1, scale=2, num_feat=16, num_block=3,
                                 num_grow_ch=8)
    clone = build_model("RRDBNet", model.hparams)
    assert clone.state_dict().keys() == model.state_dict().keys()


def test_dense_block_init_is_scaled_kaiming():
    torch.manual_seed(0)
    model = RRDBNet(num_feat=64, num_block=2, num_grow_ch=32)
    w = model.body[0].rdb1.conv2.weight  # fan_in = (64 + 32) * 9
    expected_std = 0.1 * math.sqrt(2.0 / ((64 + 32) * 9))
    assert w.std().item() == pytest.approx(expected_std, rel=0.05)
    assert torch.count_nonzero(model.body[0].rdb1.conv2.bias) == 0


def test_bad_hparams_are_rejected():
    with pytest.raises(ValueError, match="scale 1, 2 or 4"):
        RRDBNet(scale=3)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("SwinIR", {})
