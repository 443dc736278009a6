"""PSNR and SSIM exactly as BasicSR computes them, used everywhere (training validation, eval,
ensembles, reports): 8-bit images in [0, 255], ``crop_border`` pixels cut from each edge, RGB or
BT.601 Y (16 + 65.481 R + 128.553 G + 24.966 B, R/G/B in [0, 1]), MSE in float64; SSIM with an
11x11 Gaussian window (sigma 1.5), valid region only, per channel then averaged. Also the
bicubic baseline every score stands beside, and the one number format of scores."""

from __future__ import annotations

import math

import cv2
import numpy as np

from upres.errors import EvalError

Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0  # applied to [0, 255] RGB samples


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Round float [0, 1] images (and 16-bit ones) to uint8 first, as BasicSR's ``tensor2img``."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return np.rint(img / 257.0).astype(np.uint8)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _prepare(img: np.ndarray, other: np.ndarray, crop_border: int, y_channel: bool):
    if img.shape != other.shape:
        raise EvalError(f"image shapes differ: {img.shape} vs {other.shape}")
    pair = []
    for x in (img, other):
        x = to_uint8(x).astype(np.float64)
        if x.ndim == 2:
            x = x[..., None]
        if crop_border:
            x = x[crop_border:-crop_border, crop_border:-crop_border]
        if y_channel and x.shape[2] == 3:
            x = (x @ Y_WEIGHTS + 16.0)[..., None]
        pair.append(x)
    return pair


def psnr(img: np.ndarray, other: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """Peak signal-to-noise ratio in dB, peak 255; ``inf`` for identical images."""
    a, b = _prepare(img, other, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    kernel = cv2.getGaussianKernel(11, 1.5)
    window = kernel @ kernel.T
    def filt(x):
        return cv2.filter2D(x, -1, window)[5:-5, 5:-5]
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a ** 2
    var_b = filt(b * b) - mu_b ** 2
    cov = filt(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim(img: np.ndarray, other: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """Structural similarity, per channel then averaged."""
    a, b = _prepare(img, other, crop_border, y_channel)
    if min(a.shape[:2]) < 11:
        raise EvalError(f"SSIM needs images of at least 11x11 after cropping, got {a.shape[:2]}")
    return float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[2])]))


def psnr_float(img: np.ndarray, other: np.ndarray) -> float:
    """PSNR of unrounded float images in [0, 1] (to compare numerical paths, not for scoring)."""
    mse = float(np.mean((img.astype(np.float64) - other.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """The bicubic baseline every score stands beside: MATLAB ``imresize``'s kernel (Keys,
    a = -0.5), the field's reference, which Pillow's BICUBIC uses for upscaling. (OpenCV's
    INTER_CUBIC uses a = -0.75 and scores up to ~0.2 dB differently.) Each channel is resized in
    float and rounded once at the end, as MATLAB does; Pillow's own 8-bit path rounds between
    its two passes and lands up to 2 levels off."""
    from PIL import Image

    h, w = lr.shape[:2]
    size = (w * scale, h * scale)
    planes = lr[..., None] if lr.ndim == 2 else lr
    out = np.stack([np.asarray(Image.fromarray(planes[..., c].astype(np.float32), mode="F")
                               .resize(size, Image.Resampling.BICUBIC))
                    for c in range(planes.shape[2])], axis=2)
    out = np.clip(np.rint(out), 0, np.iinfo(lr.dtype).max).astype(lr.dtype)
    return out[..., 0] if lr.ndim == 2 else out


def format_score(key: str, value: float | None) -> str:
    """PSNR with 4 decimals, SSIM with 6; CSVs and reports share it, so they agree digit for
    digit."""
    if value is None:
        return ""
    return f"{value:.4f}" if key.endswith("psnr") else f"{value:.6f}"
