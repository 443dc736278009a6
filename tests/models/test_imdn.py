"""IMDN: the authors' parameter names and shapes (written out here independently of the module),
the paper's size, contrast-aware channel attention against a NumPy computation, hyperparameters
read back from a state dict, and the round trip through save, strict load and inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import assert_round_trips
from upres.models import build_model, describe, registry
from upres.models.imdn import IMDN, ContrastChannelAttention


def authors_shapes(nf: int, modules: int, upscale: int) -> dict[str, tuple]:
    """The x4 checkpoint's layout (Zheng222/IMDN, checkpoints/IMDN_x4.pth), for any width."""
    kept, rest = nf // 4, nf - nf // 4
    shapes = {"fea_conv.weight": (nf, 3, 3, 3), "fea_conv.bias": (nf,)}
    for i in range(1, modules + 1):
        for name, cin, cout, k in (("c1", nf, nf, 3), ("c2", rest, nf, 3), ("c3", rest, nf, 3),
                                   ("c4", rest, kept, 3), ("c5", nf, nf, 1)):
            shapes[f"IMDB{i}.{name}.weight"], shapes[f"IMDB{i}.{name}.bias"] = (cout, cin, k, k), (cout,)
        shapes |= {f"IMDB{i}.cca.conv_du.0.weight": (nf // 16, nf, 1, 1),
                   f"IMDB{i}.cca.conv_du.0.bias": (nf // 16,),
                   f"IMDB{i}.cca.conv_du.2.weight": (nf, nf // 16, 1, 1),
                   f"IMDB{i}.cca.conv_du.2.bias": (nf,)}
    shapes |= {"c.0.weight": (nf, nf * modules, 1, 1), "c.0.bias": (nf,), "LR_conv.weight": (nf, nf, 3, 3),
               "LR_conv.bias": (nf,), "upsampler.0.weight": (3 * upscale ** 2, nf, 3, 3),
               "upsampler.0.bias": (3 * upscale ** 2,)}
    return shapes


def test_the_authors_names_and_shapes_and_the_papers_size():
    model = IMDN()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == authors_shapes(64, 6, 4)
    assert sum(p.numel() for p in model.parameters()) == 715176  # the paper's 715K


def test_contrast_attention_matches_a_numpy_computation():
    torch.manual_seed(0)
    cca = ContrastChannelAttention(32).eval()
    x = torch.rand(2, 32, 5, 7)
    with torch.no_grad():
        got = cca(x).numpy()
    a = x.numpy()
    contrast = a.std(axis=(2, 3)) + a.mean(axis=(2, 3))  # population std, per channel
    w1, b1 = cca.conv_du[0].weight.detach().numpy()[:, :, 0, 0], cca.conv_du[0].bias.detach().numpy()
    w2, b2 = cca.conv_du[2].weight.detach().numpy()[:, :, 0, 0], cca.conv_du[2].bias.detach().numpy()
    hidden = np.maximum(contrast @ w1.T + b1, 0)
    weights = 1 / (1 + np.exp(-(hidden @ w2.T + b2)))
    np.testing.assert_allclose(got, a * weights[:, :, None, None], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("upscale", [2, 3, 4])
def test_hyperparameters_come_back_from_a_state_dict(upscale):
    sd = IMDN(nf=16, num_modules=3, upscale=upscale).state_dict()
    assert registry.detect_architecture(sd, "x") == ("IMDN", {
        "in_nc": 3, "nf": 16, "num_modules": 3, "out_nc": 3, "upscale": upscale})


def test_it_saves_loads_strictly_and_upscales(tmp_path, photo):
    torch.manual_seed(0)
    model = build_model("IMDN", {"nf": 16, "num_modules": 2, "upscale": 4}).eval()
    assert describe(model).arch == "IMDN" and describe(model).scale == 4
    assert_round_trips(model, photo[:24, :20], tmp_path)
