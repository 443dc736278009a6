import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import tiny_rrdbnet
from upres.inference.upscaler import Upscaler
from upres.io import images
from upres.models import ModelDescriptor

MODES = {
    "gray8": (np.uint8, (20, 24)),
    "gray16": (np.uint16, (20, 24)),
    "rgb8": (np.uint8, (20, 24, 3)),
    "rgb16": (np.uint16, (20, 24, 3)),
    "rgba8": (np.uint8, (20, 24, 4)),
    "rgba16": (np.uint16, (20, 24, 4)),
}


@pytest.mark.parametrize("mode", MODES)
def test_png_round_trip_and_upscale_keeps_mode_and_depth(tmp_path, mode):
    dtype, shape = MODES[mode]
    rng = np.random.default_rng(0)
    img = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)
    src = tmp_path / f"{mode}.png"
    images.write_image(src, img)
    np.testing.assert_array_equal(images.read_image(src), img)
    dst = tmp_path / "out" / f"{mode}.png"
    Upscaler(tiny_rrdbnet(), tile=16, tile_overlap=4).upscale_file(src, dst)
    out = images.read_image(dst)
    assert out.dtype == dtype
    assert out.shape == (shape[0] * 4, shape[1] * 4) + shape[2:]


def test_alpha_is_upscaled_separately(tmp_path):
    img = np.zeros((16, 16, 4), np.uint8)
    img[..., :3] = 128
    img[:, 8:, 3] = 255  # right half opaque
    out = Upscaler(tiny_rrdbnet(), tile=0).upscale_array(img)
    assert out.shape == (64, 64, 4)
    assert out[:, :28, 3].max() == 0 and out[:, 36:, 3].min() == 255


class TintX4(nn.Module):
    """Nearest x4 that scales R, G, B differently, so the gray result shows the luma mix."""

    descriptor = ModelDescriptor(arch="tint", scale=4)

    def forward(self, x):
        tint = torch.tensor([1.0, 0.5, 0.25]).view(1, 3, 1, 1)
        return F.interpolate(x, scale_factor=4, mode="nearest") * tint


def test_gray_result_is_gray(photo):
    """Gray runs through the RGB model as three equal channels and returns as BT.601 luma."""
    gray = photo[:16, :16, 0]
    out = Upscaler(TintX4(), descriptor=TintX4.descriptor, tile=0).upscale_array(gray)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    luma = (0.299 * 1.0 + 0.587 * 0.5 + 0.114 * 0.25) * gray.astype(np.float64)
    expect = np.rint(luma).astype(np.uint8).repeat(4, 0).repeat(4, 1)
    assert np.abs(out.astype(int) - expect).max() <= 1
    assert len(np.unique(out)) > 10  # a real image, not a constant


@pytest.mark.parametrize("outscale, shape", [(2, (40, 48, 3)), (3.5, (70, 84, 3)), (6, (120, 144, 3))])
def test_outscale_resizes_the_result(outscale, shape):
    img = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    out = Upscaler(tiny_rrdbnet(), tile=0, outscale=outscale).upscale_array(img)
    assert out.shape == shape and out.dtype == np.uint8
    plain = Upscaler(tiny_rrdbnet(), tile=0).upscale_array(img)
    if outscale == 2:  # area resize of the x4 result: 2x2 block means
        expect = plain.reshape(40, 2, 48, 2, 3).mean(axis=(1, 3))
        assert np.abs(out.astype(float) - expect).max() <= 1
