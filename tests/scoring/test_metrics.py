import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from upres.errors import EvalError
from upres.scoring import metrics


@pytest.fixture
def pair(photo):
    gt = photo[:64, :80]
    noisy = np.clip(gt.astype(int) + np.random.default_rng(0).integers(-12, 13, gt.shape), 0, 255)
    return noisy.astype(np.uint8), gt


def test_psnr_by_hand():
    a = np.zeros((10, 10, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 10  # one sample off by 10: MSE = 100 / 300
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / (100 / 300)))
    assert metrics.psnr(a, b, crop_border=1) == math.inf  # the differing pixel is cropped away
    y = metrics.psnr(np.full((4, 4, 3), 255, np.uint8), np.zeros((4, 4, 3), np.uint8), y_channel=True)
    # Y of white = 16 + 65.481 + 128.553 + 24.966 = 235, of black = 16
    assert y == pytest.approx(10 * math.log10(255 ** 2 / 219 ** 2))


def test_psnr_and_ssim_match_scikit_image(pair):
    pred, gt = pair
    b = 4
    ref_psnr = peak_signal_noise_ratio(gt[b:-b, b:-b], pred[b:-b, b:-b], data_range=255)
    assert metrics.psnr(pred, gt, crop_border=b) == pytest.approx(ref_psnr, abs=1e-9)
    ref_ssim = structural_similarity(gt[b:-b, b:-b].astype(np.float64), pred[b:-b, b:-b].astype(np.float64),
                                     channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    assert metrics.ssim(pred, gt, crop_border=b) == pytest.approx(ref_ssim, abs=1e-9)


def test_y_channel_matches_independent_conversion(pair):
    pred, gt = pair

    def y(img):
        f = img.astype(np.float64) / 255
        return 16 + 65.481 * f[..., 0] + 128.553 * f[..., 1] + 24.966 * f[..., 2]

    ref = peak_signal_noise_ratio(y(gt), y(pred), data_range=255)
    assert metrics.psnr(pred, gt, y_channel=True) == pytest.approx(ref, abs=1e-9)


def test_floats_are_rounded_to_uint8_first(pair):
    _, gt = pair
    as_float = gt.astype(np.float32) / 255 + 0.4 / 255  # rounds back to gt
    assert metrics.psnr(as_float, gt) == math.inf
    with pytest.raises(EvalError, match="shapes differ"):
        metrics.psnr(gt, gt[:10])


def _keys_bicubic(lr: np.ndarray, scale: int, a: float) -> np.ndarray:
    """Separable cubic convolution (Keys) with half-pixel centres and edge clamping, in float64:
    written out here independently of the library under test."""
    def kernel(x):
        x = np.abs(x)
        return np.where(x <= 1, (a + 2) * x**3 - (a + 3) * x**2 + 1,
                        np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0))

    def resize_axis(img, axis):
        n = img.shape[axis]
        centres = (np.arange(n * scale) + 0.5) / scale - 0.5
        base = np.floor(centres).astype(int)
        out = 0
        for tap in range(-1, 3):
            idx = np.clip(base + tap, 0, n - 1)
            w = kernel(centres - (base + tap))
            shape = [1] * img.ndim
            shape[axis] = -1
            out = out + np.take(img, idx, axis=axis) * w.reshape(shape)
        return out

    return resize_axis(resize_axis(lr.astype(np.float64), 0), 1)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_bicubic_baseline_is_matlabs_a_minus_half_kernel(photo, dtype):
    """The bicubic baseline uses MATLAB imresize's kernel (a = -0.5, as PIL's BICUBIC), not
    OpenCV's INTER_CUBIC (a = -0.75), which scores differently."""
    lr = photo[100:164, 200:264]
    if dtype == np.uint16:
        lr = lr.astype(np.uint16) * 257
    ours = metrics.bicubic_upscale(lr, 4).astype(np.float64)
    peak = np.iinfo(dtype).max
    inner = (slice(8, -8), slice(8, -8))  # away from the borders, where edge rules differ
    want = np.clip(_keys_bicubic(lr, 4, -0.5), 0, peak)
    assert ours.shape == (256, 256, 3) and metrics.bicubic_upscale(lr, 4).dtype == dtype
    assert np.abs(ours - want)[inner].max() <= 0.5 + 1e-3 * peak / 255  # rounding only
    opencv_like = np.clip(_keys_bicubic(lr, 4, -0.75), 0, peak)
    assert np.abs(ours - opencv_like)[inner].max() > 3 * peak / 255  # so the test can tell them apart
    from PIL import Image

    if dtype == np.uint8:  # PIL's BICUBIC, which rounds between its passes, within 2 levels
        pil = np.asarray(Image.fromarray(lr).resize((256, 256), Image.Resampling.BICUBIC))
        assert np.abs(ours - pil).max() <= 2
    gray = metrics.bicubic_upscale(lr[..., 0], 4)
    assert gray.shape == (256, 256) and gray.dtype == dtype
