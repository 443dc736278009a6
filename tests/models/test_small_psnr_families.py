"""The small published PSNR families written in upres (RFDN, RLFN, BSRN, SAFMN++, the NTIRE 2023
SAFMN, fused SPAN): each preset has the published file's exact layout (parameter and tensor
counts, and the shapes that fix its widths, read from the files in ../shared/weights and written
out here), hyperparameters come back from a state dict, it learns, saves, reloads strictly and
upscales the same; distinctive layers match independent computations; OpenVINO and ONNX
conversions agree with PyTorch or are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from helpers import assert_learns, assert_round_trips
from upres.errors import InferenceError, WeightsError
from upres.inference.upscaler import Upscaler
from upres.io.loading import load_model, save_model
from upres.models import build_model, describe, registry
from upres.models.blocks import ESA, Pointwise
from upres.models.safmn23 import GlobalResponseNorm

# preset: (family, parameters, tensors, {key: shape}) of the published x4 file
PUBLISHED_LAYOUT = {
    "rfdn-ntire": ("RFDN", 433448, 128, {"B4.esa.conv3_.weight": (12, 12, 3, 3),
                                         "c.0.weight": (50, 200, 1, 1)}),
    "rlfn-ntire": ("RLFN", 317218, 78, {"B1.c1_r.weight": (48, 46, 3, 3),
                                        "B4.esa.conv4.weight": (46, 16, 1, 1)}),
    "bsrn-s": ("BSRN", 156288, 247, {"fea_conv.pw.weight": (48, 12), "B5.cw": (1, 48), "c1.weight": (48, 240),
                                     "upsampler.upsampleOneStep.0.weight": (48, 48, 3, 3)}),
    "safmnpp": ("SAFMNPP", 211572, 32, {"feats.5.conv1.dwconv.weight": (12, 1, 3, 3),
                                        "feats.0.conv2.conv1.weight": (54, 36, 3, 3)}),
    "safmn23": ("SAFMN23", 237000, 62, {"norm.gamma": (1, 36, 1, 1), "to_img.0.bias": (48,),
                                        "feats.7.safm.mfr.3.weight": (9, 1, 3, 3)}),
    "span-ch28": ("SPANFused", 150688, 44, {"block_6.c3_r.eval_conv.weight": (28, 28, 3, 3),
                                            "conv_cat.weight": (28, 112, 1, 1)}),
}
TINY = {
    "RFDN": {"nf": 8, "num_modules": 2},
    "RLFN": {"nf": 8, "mf": 12, "num_blocks": 2, "esa_channels": 4},
    "BSRN": {"num_feat": 8, "num_block": 2},
    "SAFMNPP": {"dim": 6, "n_blocks": 2, "ffn_scale": 1.5},
    "SAFMN23": {"dim": 8, "n_blocks": 2},
    "SPANFused": {"feature_channels": 8},
}


def tiny(arch: str, scale: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, {**TINY[arch], registry.get(arch).scale_key: scale})


@pytest.mark.parametrize("preset", sorted(PUBLISHED_LAYOUT))
def test_each_preset_has_the_published_files_layout(preset):
    family, params, tensors, shapes = PUBLISHED_LAYOUT[preset]
    arch, entry = registry.presets()[preset]
    assert arch == family
    model = build_model(arch, registry.hyperparameters(arch, 4, preset))
    state = model.state_dict()
    assert (sum(p.numel() for p in model.parameters()), len(state)) == (params, tensors)
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert registry.detect_architecture(state, "x") == (arch, {
        k: v for k, v in model.hparams.items() if k not in ("img_range", "norm")})


@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("scale", [2, 3])
def test_hyperparameters_come_back_at_every_scale(arch, scale):
    model = tiny(arch, scale)
    found = registry.detect_architecture(model.state_dict(), "x")
    assert found[0] == arch
    assert build_model(arch, found[1]).hparams == model.hparams


@pytest.mark.parametrize("arch", sorted(TINY))
def test_it_learns_saves_reloads_strictly_and_upscales(arch, tmp_path, photo):
    model = tiny(arch).train()
    assert_learns(model, size=20, steps=10)
    model.eval()
    assert describe(model).arch == arch and describe(model).scale == 4
    assert_round_trips(model, photo[:40, :36], tmp_path)


def test_a_truncated_file_names_the_missing_tensor(tmp_path):
    state = tiny("RLFN").state_dict()
    del state["B2.esa.conv3.weight"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(WeightsError, match=r"cut\.pth.*B2\.esa\.conv3\.weight"):
        load_model(tmp_path / "cut.pth")


@pytest.mark.parametrize("arch", sorted(TINY))
def test_openvino_agrees_with_pytorch_and_onnx_converts_or_is_refused(arch, tmp_path, photo):
    pytest.importorskip("openvino")
    model, lr = tiny(arch).eval(), photo[100:140, 200:236]
    torch_out = Upscaler(model, backend="torch", dtype="fp32", tile=0).upscale_array(lr)
    ov_out = Upscaler(model, backend="openvino", dtype="fp32", tile=0).upscale_array(lr)
    assert np.abs(ov_out.astype(int) - torch_out).max() <= 1
    refusal = registry.backend_refusal(arch, "onnx")
    if refusal:
        with pytest.raises((InferenceError, WeightsError), match="only takes the export's input size"):
            save_model(model, tmp_path / "m.onnx")
        return
    ort = pytest.importorskip("onnxruntime")
    save_model(model, tmp_path / "m.onnx")
    x = torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4)


def test_pointwise_is_a_1x1_convolution():
    torch.manual_seed(0)
    layer, x = Pointwise(5, 7), torch.rand(2, 5, 6, 4)
    conv = F.conv2d(x, layer.weight[:, :, None, None], layer.bias)
    torch.testing.assert_close(layer(x), conv)


def test_global_response_norm_matches_numpy():
    torch.manual_seed(0)
    norm = GlobalResponseNorm(6)
    with torch.no_grad():
        norm.gamma.normal_()
        norm.beta.normal_()
    x = torch.rand(2, 6, 5, 7)
    a = x.numpy()
    energy = np.sqrt((a ** 2).sum(axis=(2, 3), keepdims=True))
    expect = (norm.gamma.detach().numpy() * a * energy / (energy.mean(axis=1, keepdims=True) + 1e-6)
              + norm.beta.detach().numpy() + a)
    np.testing.assert_allclose(norm(x).detach().numpy(), expect, rtol=1e-5, atol=1e-6)


def test_spatial_attention_needs_its_minimum_size_and_the_engine_pads_to_it(photo):
    esa = ESA(8, 4)
    esa(torch.rand(1, 8, ESA.MIN_SIZE, ESA.MIN_SIZE))
    with pytest.raises(RuntimeError):
        esa(torch.rand(1, 8, ESA.MIN_SIZE - 2, ESA.MIN_SIZE - 2))
    model = tiny("RFDN").eval()
    assert describe(model).min_size == ESA.MIN_SIZE
    out = Upscaler(model, backend="torch", dtype="fp32", tile=0).upscale_array(photo[:9, :11])
    assert out.shape == (36, 44, 3)


def test_fused_span_matches_spandrels_span_after_its_own_fusion():
    """An independent implementation: spandrel's SPAN (the training form) fuses its Conv3XC
    branches into ``eval_conv`` when run in eval mode; those tensors loaded strictly into
    SPANFused give the same output (this fixed the in-place SiLU of each block's first layer)."""
    spandrel_span = pytest.importorskip("spandrel.architectures.SPAN")
    torch.manual_seed(0)
    theirs = spandrel_span.SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=4).eval()
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        for p in theirs.parameters():  # away from the initialisation, so every branch counts
            p.add_(torch.randn_like(p) * 0.05)
        expect = theirs(x)
    ours = build_model("SPANFused", {"feature_channels": 8, "upscale": 4}).eval()
    mine = set(ours.state_dict())
    ours.load_state_dict({k: v for k, v in theirs.state_dict().items() if k in mine}, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), expect, rtol=1e-4, atol=1e-5)
