"""Blind recipe estimation: which fingerprint group made an LR image, from the LR alone.

An image is described by (1) the distribution (mean, spread, percentiles) of its patches'
features: each ``PATCH``-pixel patch's spectrum in radial bands, its blockiness on the 8-pixel
JPEG grid, a robust noise level and the lag-1 correlation of its high-pass residual; (2) the
image's average power spectrum, radially (its shape apart from the content's slope) and in two
dimensions (the resampling kernels are separable: their traces lie along the axes); (3) how many
8x8 DCT coefficients sit at zero on the JPEG grid against a grid shifted by 4 (quantization
leaves them there; content does not care about the grid). A multinomial logistic regression on
standardized vectors gives each group's probability. Measured on a BSD68 set of six recipes
(upres make-set): the 2D spectrum and the DCT features took held-out accuracy from 67% to 82%.
The model is stored as plain numbers in fingerprint.json (no pickles)."""

from __future__ import annotations

import numpy as np

from upres.degradation.kernels import jpeg_grid
from upres.io.images import luma

PATCH = 32
BANDS = 8


def _band_index(size: int) -> np.ndarray:
    f = np.fft.fftfreq(size)
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2) / 0.5  # 1.0 at the Nyquist edge
    return np.minimum((radius * BANDS).astype(int), BANDS)  # corners share the last band


_BANDS = _band_index(PATCH)
_HANN = np.outer(np.hanning(PATCH), np.hanning(PATCH)).astype(np.float32)


def _blockiness(p: np.ndarray) -> np.ndarray:
    """``kernels.blockiness`` of each patch of a batch (patches start on the 8-pixel grid)."""
    steps_x, steps_y = np.abs(np.diff(p, axis=2)), np.abs(np.diff(p, axis=1))
    on = (np.arange(PATCH - 1) % 8) == 7
    on_mean = (steps_x[:, :, on].sum((1, 2)) + steps_y[:, on].sum((1, 2))) / (2 * on.sum() * PATCH)
    off_mean = (steps_x[:, :, ~on].sum((1, 2)) + steps_y[:, ~on].sum((1, 2))) / (2 * (~on).sum() * PATCH)
    flat = off_mean < 1e-6  # no texture: no evidence either way
    return np.where(flat, 1.0, on_mean / np.where(flat, 1.0, off_mean))


def patch_features(y: np.ndarray) -> np.ndarray:
    """Features of a batch of luma patches (N x PATCH x PATCH, each at a multiple of 8)."""
    p = y - y.mean((1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(p * _HANN)) ** 2
    bands = np.stack([power[:, _BANDS == b].sum(1) for b in range(1, BANDS + 1)], axis=1)
    rel = np.log(bands / np.maximum(bands.sum(1, keepdims=True), 1e-6) + 1e-8)
    hp = p[:, 1:-1, 1:-1] * 4 - p[:, :-2, 1:-1] - p[:, 2:, 1:-1] - p[:, 1:-1, :-2] - p[:, 1:-1, 2:]
    noise = np.log(np.median(np.abs(hp).reshape(len(p), -1), axis=1) + 1e-3)
    hv = hp - hp.mean((1, 2), keepdims=True)
    var = np.maximum((hv * hv).mean((1, 2)), 1e-8)
    corr = ((hv[:, :, 1:] * hv[:, :, :-1]).mean((1, 2)) + (hv[:, 1:] * hv[:, :-1]).mean((1, 2))) / (2 * var)
    contrast = np.log(p.std((1, 2)) + 1e-3)
    extra = np.stack([np.log(np.maximum(_blockiness(y), 1e-3)), noise, corr, contrast,
                      noise - contrast], axis=1)
    return np.concatenate([rel, extra], axis=1).astype(np.float32)


def image_features(lr: np.ndarray, max_patches: int = 256) -> np.ndarray:
    """Features of up to ``max_patches`` patches on an evenly spread, 8-aligned grid."""
    y = luma(lr)
    if min(y.shape) < PATCH:  # a small image: mirrored out to one patch
        y = np.pad(y, [(0, max(PATCH - y.shape[0], 0)), (0, max(PATCH - y.shape[1], 0))],
                   mode="symmetric")
    h, w = y.shape
    rows = np.arange(0, h - PATCH + 1, 8)  # overlapping patches, on the JPEG grid
    cols = np.arange(0, w - PATCH + 1, 8)
    spots = [(r, c) for r in rows for c in cols]
    if len(spots) > max_patches:
        spots = [spots[i] for i in np.linspace(0, len(spots) - 1, max_patches).astype(int)]
    return patch_features(np.stack([y[r:r + PATCH, c:c + PATCH] for r, c in spots]))


def image_vector(lr: np.ndarray, max_patches: int = 256) -> np.ndarray:
    """One image's description (see the module): pooling over the whole image averages out most
    of what the content does to a single patch, which is what the recipe leaves behind."""
    f = image_features(lr, max_patches)
    y = luma(lr)
    return np.concatenate([f.mean(0), f.std(0), *np.percentile(f, [10, 90], axis=0),
                           radial_spectrum(y), planar_spectrum(y), jpeg_grid(y)]).astype(np.float32)


def _patches(y: np.ndarray, side: int) -> np.ndarray:
    """Half-overlapping patches of ``side`` pixels (a small image mirrored out to one),
    centred and Hann-windowed, for an average power spectrum."""
    if min(y.shape) < side:
        y = np.pad(y, [(0, max(side - y.shape[0], 0)), (0, max(side - y.shape[1], 0))],
                   mode="symmetric")
    step = side // 2
    p = np.stack([y[r:r + side, c:c + side] for r in range(0, y.shape[0] - side + 1, step)
                  for c in range(0, y.shape[1] - side + 1, step)])
    return (p - p.mean((1, 2), keepdims=True)) * np.outer(np.hanning(side), np.hanning(side))


def radial_spectrum(y: np.ndarray, side: int = 32, bands: int = 16) -> np.ndarray:
    """The image's log power in radial bands, centred, and its departure from a power law (the
    content's slope), with the slope itself."""
    power = (np.abs(np.fft.fft2(_patches(y, side))) ** 2).mean(0)
    f = np.fft.fftfreq(side)
    band = np.minimum((np.hypot(f[:, None], f[None, :]) / 0.5 * bands).astype(int), bands)
    level = np.log(np.array([power[band == b].mean() for b in range(1, bands + 1)]) + 1e-6)
    x = np.log(np.arange(1, bands + 1))
    fit = np.polyfit(x, level, 1)
    return np.concatenate([level - level.mean(), level - np.polyval(fit, x), fit])


def planar_spectrum(y: np.ndarray, side: int = 16) -> np.ndarray:
    """The image's average log power spectrum in two dimensions (rfft), centred."""
    power = np.log((np.abs(np.fft.rfft2(_patches(y, side))) ** 2).mean(0) + 1e-3)
    return (power - power.mean()).ravel()


def train(vectors: list[np.ndarray], groups: list[int], folds: int = 5, seed: int = 0,
          sources: list[int] | None = None, real: list[bool] | None = None) -> dict:
    """Fit the classifier on every image's vector; report the accuracy on the real images
    (``real``; the others are synthesized) cross-validated by source pair (``sources``: no pair's
    images, real or synthesized, are in both the fitted and the scored folds) beside chance;
    ``held_out`` keeps each real image's [group, label, confidence] from the fit that did not see
    it, as a test image's label would be (refinement is chosen on them)."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(groups)
    sources = np.asarray(sources if sources is not None else range(len(labels)))
    real = np.asarray(real if real is not None else [True] * len(labels))
    x = np.stack(vectors)
    n_classes = int(labels.max()) + 1
    chance = float(np.bincount(labels[real]).max() / real.sum())
    held_out = []  # per real image, scored by a fit that did not see its pair: [group, label, p]
    k = min(folds, len(np.unique(sources)))
    if k >= 2 and len(np.unique(labels)) > 1:
        splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
        for train_idx, test_idx in splitter.split(x, labels, sources):
            model = _fit(x[train_idx], labels[train_idx])
            for i in test_idx[real[test_idx]]:
                p = probabilities(model, x[i], n_classes)
                held_out.append([int(labels[i]), int(p.argmax()), round(float(p.max()), 4)])
    model = _fit(x, labels)
    correct = sum(group == label for group, label, _ in held_out)
    model.update(accuracy=correct / len(held_out) if held_out else None, chance=chance, folds=k,
                 images=int(real.sum()), synthesized=int((~real).sum()), held_out=held_out)
    return model


def _fit(x: np.ndarray, labels: np.ndarray) -> dict:
    """A multinomial logistic regression on standardized vectors, as plain numbers."""
    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(0), x.std(0) + 1e-6
    classes = np.unique(labels)
    if len(classes) == 1:
        return {"mean": mean.tolist(), "std": std.tolist(), "classes": classes.tolist(),
                "coef": [[0.0] * x.shape[1]], "intercept": [0.0]}
    clf = LogisticRegression(max_iter=5000, C=0.1).fit((x - mean) / std, labels)
    coef, intercept = clf.coef_, clf.intercept_
    if len(classes) == 2:  # sklearn stores one row for two classes
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    return {"mean": mean.tolist(), "std": std.tolist(), "classes": classes.tolist(),
            "coef": np.asarray(coef).tolist(), "intercept": np.asarray(intercept).tolist()}


def probabilities(model: dict, vector: np.ndarray, n_groups: int | None = None) -> np.ndarray:
    """Every group's probability for one image's vector."""
    x = (np.asarray(vector) - np.asarray(model["mean"])) / np.asarray(model["std"])
    logits = x @ np.asarray(model["coef"]).T + np.asarray(model["intercept"])
    p = np.exp(logits - logits.max())
    out = np.zeros(n_groups or (max(model["classes"]) + 1))
    out[np.asarray(model["classes"])] = p / p.sum()
    return out
