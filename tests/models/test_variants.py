import pytest
import torch

from helpers import tiny_rrdbnet
from upres.inference.upscaler import Upscaler
from upres.io.loading import load_model, load_weights, save_model
from upres.io.weights import load_matching
from upres.models import RRDBNet
from upres.models.rrdbnet import infer_hparams

VARIANTS = {
    "base": {},
    "wide": dict(num_feat=12, num_grow_ch=6),
    "rotation": dict(rotation=True),
    "I-R-U-R-U-O": dict(post_up_blocks=[1]),
    "I-R-U-R-U-R-O": dict(post_up_blocks=[1, 2]),
    "gated": dict(gated=True),
}


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("name", VARIANTS)
def test_forward_backward(name, scale):
    model = tiny_rrdbnet(scale=scale, **VARIANTS[name]).train()
    x = torch.rand(2, 3, 8, 12, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 3, 8 * scale, 12 * scale)
    y.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_rotation_model_is_equivariant_to_90_degree_turns():
    model = tiny_rrdbnet(rotation=True)
    x = torch.rand(1, 3, 10, 14)
    with torch.no_grad():
        turned = model(torch.rot90(x, 1, (2, 3)))
        expect = torch.rot90(model(x), 1, (2, 3))
    torch.testing.assert_close(turned, expect, rtol=0, atol=1e-5)
    plain = tiny_rrdbnet()  # same weights, no rotation averaging: not equivariant
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (plain(torch.rot90(x, 1, (2, 3))) - torch.rot90(plain(x), 1, (2, 3))).abs().max() > 1e-4


def test_layouts_keep_basicsr_names_and_add_their_own():
    base_keys = set(RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).state_dict())
    model = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, post_up_blocks=[2, 1], gated=True)
    keys = set(model.state_dict())
    assert base_keys < keys
    assert "body_up1.1.rdb3.conv5.weight" in keys and "conv_body_up2.weight" in keys
    assert "body.0.rdb1.gate1.weight" in keys


@pytest.mark.parametrize("name", VARIANTS)
def test_save_load_round_trip_and_upscale(tmp_path, name):
    model = tiny_rrdbnet(**VARIANTS[name])
    path = tmp_path / f"{name}.safetensors"
    save_model(model, path)
    again = load_model(path)
    assert again.hparams == model.hparams
    x = torch.rand(1, 3, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    out = Upscaler(path, tile=0, dtype="fp32").upscale_float(x[0].permute(1, 2, 0).numpy())
    assert out.shape == (36, 28, 3)
    # rotation leaves no trace in the shapes (the metadata carries it): inferred are the others
    shapes = {k: v for k, v in model.hparams.items() if k != "rotation"}
    if name == "rotation":  # nothing else of a variant either
        shapes = {k: v for k, v in shapes.items() if k not in ("post_up_blocks", "gated")}
    assert infer_hparams(model.state_dict()) == shapes


def test_pretrained_loads_into_matching_parts_of_a_variant():
    model = RRDBNet(num_feat=64, num_grow_ch=32, num_block=2, post_up_blocks=[1], gated=True)
    report = load_matching(model, load_weights("realesrgan-x4plus-anime"), strict=False)
    assert "body.1.rdb3.conv5.weight" in report["loaded"] and "conv_last.weight" in report["loaded"]
    assert "body.0.rdb1.gate1.weight" in report["skipped"]
    assert "body_up1.0.rdb1.conv1.weight" in report["skipped"]
    ref = load_weights("realesrgan-x4plus-anime").state_dict
    assert torch.equal(model.state_dict()["body.1.rdb3.conv5.weight"], ref["body.1.rdb3.conv5.weight"])
