import math

import pytest
import torch
from torch import nn

from upres.errors import ArchitectureError
from upres.models import ModelDescriptor, RRDBNet, build_model, describe
from upres.models.rrdbnet import UNSHUFFLE


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
    torch.manual_seed(0)
    model = RRDBNet(num_in_ch=1, num_out_ch=1, scale=2, num_feat=16, num_block=3, num_grow_ch=8)
    assert model.hparams == dict(num_in_ch=1, num_out_ch=1, scale=2, num_feat=16, num_block=3,
                                 num_grow_ch=8)
    torch.manual_seed(1)  # a different initialisation, then the original weights loaded
    clone = build_model("RRDBNet", model.hparams)
    assert {k: v.shape for k, v in clone.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    clone.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(1, 1, 6, 10)
    with torch.no_grad():
        assert torch.equal(clone.eval()(x), model.eval()(x))
        assert model(x).shape == (1, 1, 12, 20)


def test_descriptor_states_what_consumers_need():
    desc = describe(RRDBNet(num_in_ch=1, num_out_ch=3, scale=2, num_feat=8, num_block=1,
                            num_grow_ch=4))
    assert desc == ModelDescriptor(arch="RRDBNet", scale=2, in_channels=1, out_channels=3,
                                   size_multiple=2, dtypes=("fp32", "bf16", "fp16"),
                                   activation_channels=8,
                                   hparams=dict(num_in_ch=1, num_out_ch=3, scale=2, num_feat=8,
                                                num_block=1, num_grow_ch=4))
    assert desc.supports("bf16") and not desc.supports("int8")
    assert [describe(RRDBNet(scale=s, num_feat=4, num_block=1, num_grow_ch=2)).size_multiple
            for s in (4, 2, 1)] == [1, 2, 4]
    with pytest.raises(ArchitectureError, match="Linear is not a registered architecture"):
        describe(nn.Linear(2, 2))


def test_unshuffle_table_matches_pixel_unshuffle_channels():
    for scale, factor in UNSHUFFLE.items():
        model = RRDBNet(num_in_ch=2, scale=scale, num_feat=4, num_block=1, num_grow_ch=2)
        assert model.conv_first.weight.shape[1] == 2 * factor * factor
        assert scale * factor == 4  # the body always runs at a quarter of the output size


def test_dense_block_init_is_scaled_kaiming():
    torch.manual_seed(0)
    model = RRDBNet(num_feat=64, num_block=2, num_grow_ch=32)
    w = model.body[0].rdb1.conv2.weight  # fan_in = (64 + 32) * 9
    expected_std = 0.1 * math.sqrt(2.0 / ((64 + 32) * 9))
    assert w.std().item() == pytest.approx(expected_std, rel=0.05)
    assert torch.count_nonzero(model.body[0].rdb1.conv2.bias) == 0


def test_bad_hparams_are_rejected():
    with pytest.raises(ArchitectureError, match="scale 1, 2 or 4"):
        RRDBNet(scale=3)
    with pytest.raises(ArchitectureError, match=r"unknown architecture 'NoSuchNet'; known: RRDBNet, .*Swin"):
        build_model("NoSuchNet", {})
    with pytest.raises(ArchitectureError, match="RRDBNet: bad hyperparameters .*num_feet"):
        build_model("RRDBNet", {"num_feet": 3})


@pytest.mark.parametrize("layout", ["2019", "2018"])
def test_the_original_esrgan_repositorys_files_load_strictly_in_either_layout(layout, tmp_path):
    """RRDB_PSNR_x4.pth and its kin circulate in ESRGAN's own names (RRDB_trunk, upconv1, ...)
    and in its older sequential ones (model.1.sub.N); both load as RRDBNet and compute the same."""
    import re

    from upres.io.loading import load_model

    torch.manual_seed(0)
    model = RRDBNet(num_feat=8, num_block=2, num_grow_ch=4).eval()
    renamed = {}
    for key, tensor in model.state_dict().items():
        if layout == "2019":
            for pattern, repl in ((r"^body\.", "RRDB_trunk."), (r"\.rdb(\d)\.", r".RDB\1."),
                                  (r"^conv_body\.", "trunk_conv."), (r"^conv_up(\d)\.", r"upconv\1."),
                                  (r"^conv_hr\.", "HRconv.")):
                key = re.sub(pattern, repl, key)
        elif m := re.match(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(.*)$", key):
            key = f"model.1.sub.{m[1]}.RDB{m[2]}.conv{m[3]}.0.{m[4]}"
        else:
            head, rest = key.split(".", 1)
            key = {"conv_first": "model.0", "conv_body": "model.1.sub.2", "conv_up1": "model.3",
                   "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}[head] + "." + rest
        renamed[key] = tensor
    assert "body.0.rdb1.conv1.weight" not in renamed and "conv_up1.weight" not in renamed
    torch.save(renamed, tmp_path / "esrgan.pth")
    loaded = load_model(tmp_path / "esrgan.pth")
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
