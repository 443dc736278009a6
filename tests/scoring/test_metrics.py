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
