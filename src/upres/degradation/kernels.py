"""Per-pair degradation fit: the linear kernel on the HR grid that best maps HR to LR (least
squares, with a bias; the kernel's position inside its window carries the sub-pixel offset), and
statistics of what the kernel leaves unexplained (noise level, JPEG blockiness) and the mark JPEG
leaves on the LR image's 8x8 DCT coefficients."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from upres.io.images import luma

KERNEL = 16  # kernel side on the HR grid (covers antialiased bicubic at x4; lanczos is truncated)
BLOCK = 96  # side of the LR block fitted per pair


def window_start(scale: int, size: int = KERNEL) -> int:
    """HR offset of LR pixel 0's window: centred on the LR pixel's centre ``(scale - 1) / 2``."""
    return (scale - size) // 2


@dataclass
class PairFit:
    kernel: np.ndarray  # size x size, sums to ~1
    bias: float
    noise: float  # residual standard deviation, 8-bit units
    blockiness: float  # residual steps across the 8x8 JPEG grid / elsewhere (1: no blocks)
    offset: tuple[float, float]  # kernel centroid minus the window centre (y, x), HR pixels
    spread: float  # RMS radius of the kernel, HR pixels
    profile_se: float  # standard error of ``profile()`` (RMS over its entries), from the fit
    correlation: float  # lag-1 autocorrelation of the residual (0: white noise; JPEG: > 0)
    grid: float  # ``grid_evidence`` of the LR image (0: no JPEG; 0.1 to 0.6: quality 95 to 50)

    def profile(self) -> np.ndarray:
        """The kernel's column and row sums: its shape, with the noise of single taps averaged."""
        return np.concatenate([self.kernel.sum(0), self.kernel.sum(1)])


def _block_bounds(n: int, scale: int, size: int, block: int) -> tuple[int, int]:
    """A central range of LR indices whose windows lie inside the HR image."""
    start = window_start(scale, size)
    lo = max(0, -(start // scale) + (1 if start % scale else 0))
    hi = (n * scale - size - start) // scale + 1  # exclusive
    if hi - lo <= 8:
        raise ValueError(f"image too small for a {size}x{size} kernel fit")
    length = min(block, hi - lo)
    first = lo + (hi - lo - length) // 2
    return first, first + length


def fit_pair(lr: np.ndarray, hr: np.ndarray, scale: int, size: int = KERNEL,
             block: int = BLOCK, errors: bool = True) -> PairFit:
    """Fit the kernel on a central LR block of up to ``block`` x ``block`` pixels (luma);
    ``errors=False`` skips the profile's standard error (NaN)."""
    r0, r1 = _block_bounds(lr.shape[0], scale, size, block)
    c0, c1 = _block_bounds(lr.shape[1], scale, size, block)
    start = window_start(scale, size)
    top, left = r0 * scale + start, c0 * scale + start  # only the HR rows the block needs are read
    y_lr = luma(lr[r0:r1, c0:c1])
    y_hr = luma(hr[top:(r1 - 1) * scale + start + size, left:(c1 - 1) * scale + start + size])
    windows = sliding_window_view(y_hr, (size, size))
    rows = np.arange(r1 - r0) * scale
    cols = np.arange(c1 - c0) * scale
    patches = windows[rows[:, None], cols[None, :]].reshape(-1, size * size)
    target = y_lr.reshape(-1)
    design = np.concatenate([patches, np.ones((len(patches), 1), np.float32)], axis=1)
    gram = design.T @ design
    gram[np.diag_indices(size * size)] += 1e-3 * len(patches)  # tiny ridge for flat blocks
    gram = gram.astype(np.float64)
    try:
        solution = np.linalg.solve(gram, (design.T @ target).astype(np.float64))
    except np.linalg.LinAlgError:  # ("Singular matrix" says nothing to a user)
        raise ValueError("its pixels are too uniform to fit a downscaling kernel (a flat or "
                         "constant image); leave it out") from None
    kernel, bias = solution[:-1].reshape(size, size), float(solution[-1])
    residual = (target - design @ solution).reshape(r1 - r0, c1 - c0)
    noise = float(residual.std())
    profile_se = noise * _profile_scale(gram, size) if errors else float("nan")
    return PairFit(kernel.astype(np.float32), bias, noise, blockiness(residual, r0, c0),
                   *_moments(kernel), profile_se, _lag1(residual), grid_evidence(lr))


def _profile_scale(gram: np.ndarray, size: int) -> float:
    """RMS standard error of the kernel profile per unit noise: cov(kernel) = noise^2 G^-1, and the
    profile sums the kernel over rows and over columns."""
    sums = np.zeros((2 * size, gram.shape[0]))
    sums[:, :-1] = np.concatenate([np.kron(np.ones((1, size)), np.eye(size)),
                                   np.kron(np.eye(size), np.ones((1, size)))])
    try:
        cov = sums @ np.linalg.solve(gram, sums.T)
    except np.linalg.LinAlgError:
        return float("nan")  # (the fit above solved it: this cannot happen but in rounding)
    return float(np.sqrt(max(np.trace(cov), 0.0) / len(sums)))


def _lag1(residual: np.ndarray) -> float:
    r = residual - residual.mean()
    var = float((r * r).mean())
    if var <= 1e-12:
        return 0.0
    return float(((r[:, 1:] * r[:, :-1]).mean() + (r[1:] * r[:-1]).mean()) / (2 * var))


def _moments(kernel: np.ndarray) -> tuple[tuple[float, float], float]:
    weights = np.abs(kernel) / max(np.abs(kernel).sum(), 1e-12)
    grid = np.arange(kernel.shape[0]) - (kernel.shape[0] - 1) / 2
    cy, cx = float((weights.sum(1) * grid).sum()), float((weights.sum(0) * grid).sum())
    radius2 = (weights * ((grid[:, None] - cy) ** 2 + (grid[None, :] - cx) ** 2)).sum()
    return (cy, cx), float(np.sqrt(radius2))


def blockiness(img: np.ndarray, row0: int = 0, col0: int = 0) -> float:
    """Mean absolute step across the 8-pixel JPEG grid divided by the mean step elsewhere
    (``row0``, ``col0``: where ``img`` sits in the full image, so the grid lines up)."""
    steps_x = np.abs(np.diff(img, axis=1))
    steps_y = np.abs(np.diff(img, axis=0))
    on_x = (np.arange(col0, col0 + steps_x.shape[1]) % 8) == 7
    on_y = (np.arange(row0, row0 + steps_y.shape[0]) % 8) == 7
    on = np.concatenate([steps_x[:, on_x].ravel(), steps_y[on_y].ravel()])
    off = np.concatenate([steps_x[:, ~on_x].ravel(), steps_y[~on_y].ravel()])
    return float(on.mean() / max(off.mean(), 1e-6)) if on.size and off.size else 1.0


def jpeg_grid(y: np.ndarray) -> np.ndarray:
    """Shares of 8x8 DCT coefficients near zero in three frequency rings, on the JPEG grid and
    as the difference from a grid shifted by 4 pixels (quantization leaves coefficients at zero
    on its own grid; content, resampling and noise do not care about the grid)."""
    import cv2

    def shares(z: np.ndarray) -> list[float]:
        h, w = z.shape[0] // 8 * 8, z.shape[1] // 8 * 8
        if h < 8 or w < 8:
            return [0.0] * 6
        blocks = z[:h, :w].reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8)
        coef = np.abs(np.stack([cv2.dct(np.ascontiguousarray(b, np.float32)) for b in blocks]))
        ring = np.add.outer(np.arange(8), np.arange(8))
        return [float(np.mean(coef[:, (ring >= lo) & (ring < hi)] < t))
                for lo, hi in ((2, 5), (5, 8), (8, 15)) for t in (0.5, 1.5)]

    aligned, shifted = np.array(shares(y)), np.array(shares(y[4:, 4:]))
    return np.concatenate([aligned, aligned - shifted])


GRID_SIDE = 256  # LR pixels a side read by ``grid_evidence`` (a central crop on the 8-pixel grid)
GRID_BLOCKS_HALF = 64  # 8x8 blocks at which ``grid_evidence`` keeps half its raw value


def grid_evidence(lr: np.ndarray) -> float:
    """How much more often 8x8 DCT coefficients sit near zero on the image's JPEG grid than on a
    grid shifted by 4 (raw: 0 for resampling, blur and noise, 0.09 to 0.65 for JPEG at quality 95
    to 50 on BSD68, Set5 and Set14 under ``make-set`` recipes). Blockiness misses it: JPEG 50 on a
    detailed image can leave a residual much like noise's. Without JPEG the raw value scatters as
    about 0.17 / sqrt(blocks) (scikit-image photos: SD 0.042 over 16 blocks, 0.008 over 256, up
    to +0.23 on a 32x32 LR image), so it is shrunk by blocks / (blocks + ``GRID_BLOCKS_HALF``):
    small images say little either way."""
    h, w = lr.shape[:2]
    sh, sw = min(GRID_SIDE, h) // 8 * 8, min(GRID_SIDE, w) // 8 * 8
    y, x = (h - sh) // 2 // 8 * 8, (w - sw) // 2 // 8 * 8
    blocks = (sh // 8) * (sw // 8)
    if blocks == 0:
        return 0.0
    raw = float(jpeg_grid(luma(lr[y:y + sh, x:x + sw]))[6:].mean())
    return raw * blocks / (blocks + GRID_BLOCKS_HALF)


def apply_kernel(hr: np.ndarray, kernel: np.ndarray, scale: int, bias: float = 0.0) -> np.ndarray:
    """Degrade an HR image (float, HxW or HxWxC) with a fitted kernel: the same windows as
    ``fit_pair`` (edges reflected), evaluated only where LR pixels fall; float LR of size
    (H/scale, W/scale)."""
    size = kernel.shape[0]
    start = window_start(scale, size)
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    before, after = max(0, -start), max(0, (h - 1) * scale + start + size - hr.shape[0])
    after_w = max(0, (w - 1) * scale + start + size - hr.shape[1])
    pad = [(before, after), (before, after_w)] + [(0, 0)] * (hr.ndim - 2)
    src = np.pad(np.asarray(hr, np.float32), pad, mode="reflect")
    first = start + before
    flat = kernel.astype(np.float32).reshape(-1)
    out = np.empty((h, w) + hr.shape[2:], np.float32)
    rows_per_chunk = max(1, 2 ** 22 // max(1, w * size * size))
    for r0 in range(0, h, rows_per_chunk):  # bounded memory: a band of LR rows at a time
        r1 = min(h, r0 + rows_per_chunk)
        band = src[first + r0 * scale:first + (r1 - 1) * scale + size]
        win = sliding_window_view(band, (size, size), axis=(0, 1))[::scale, ::scale][:r1 - r0, :w]
        out[r0:r1] = np.tensordot(win, flat.reshape(size, size), axes=([-2, -1], [0, 1]))
    return out + bias
