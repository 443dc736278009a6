"""Blind recipe estimation: which fingerprint group made an LR image, from the LR alone.

Each LR image is cut into patches of ``PATCH`` pixels; a patch is described by its spectrum
(energy in radial frequency bands, relative to the total), its blockiness on the 8-pixel JPEG
grid, a robust noise estimate and the lag-1 correlation of its high-pass residual. A logistic
regression on standardized features predicts the group of each patch; an image's probabilities
are the mean over its patches. The model is stored as plain numbers in fingerprint.json (no
pickles)."""

from __future__ import annotations

import numpy as np

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
    h, w = y.shape
    rows = np.arange(0, h - PATCH + 1, 8)  # overlapping patches, on the JPEG grid
    cols = np.arange(0, w - PATCH + 1, 8)
    if not len(rows) or not len(cols):
        raise ValueError(f"image {w}x{h} is smaller than a {PATCH}x{PATCH} patch")
    spots = [(r, c) for r in rows for c in cols]
    if len(spots) > max_patches:
        spots = [spots[i] for i in np.linspace(0, len(spots) - 1, max_patches).astype(int)]
    return patch_features(np.stack([y[r:r + PATCH, c:c + PATCH] for r, c in spots]))


def train(features: list[np.ndarray], groups: list[int], folds: int = 5, seed: int = 0,
          sources: list[int] | None = None, real: list[bool] | None = None) -> dict:
    """Fit the classifier on every image; report the accuracy on the real images (``real``; the
    others are synthesized) cross-validated by source pair (``sources``: no pair's images, real
    or synthesized, are in both the fitted and the scored folds) beside chance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(groups)
    sources = np.asarray(sources if sources is not None else range(len(labels)))
    real = np.asarray(real if real is not None else [True] * len(labels))
    n_classes = int(labels.max()) + 1
    chance = float(np.bincount(labels[real]).max() / real.sum())
    correct, scored = 0, 0
    k = min(folds, len(np.unique(sources)))
    if k >= 2 and len(np.unique(labels)) > 1:
        splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
        for train_idx, test_idx in splitter.split(np.zeros(len(labels)), labels, sources):
            model = _fit(LogisticRegression, [features[i] for i in train_idx], labels[train_idx])
            for i in test_idx[real[test_idx]]:
                correct += int(probabilities(model, features[i], n_classes).argmax() == labels[i])
                scored += 1
    model = _fit(LogisticRegression, features, labels)
    model.update(accuracy=correct / scored if scored else None, chance=chance, folds=k,
                 images=int(real.sum()), synthesized=int((~real).sum()))
    return model


MAX_ROWS = 12_000  # patches fitted at most: each image contributes an even share


def _fit(cls, features: list[np.ndarray], labels: np.ndarray) -> dict:
    share = max(4, -(-MAX_ROWS // max(1, len(features))))
    picked = [f[np.linspace(0, len(f) - 1, min(share, len(f))).astype(int)] for f in features]
    x = np.concatenate(picked)
    y = np.concatenate([[g] * len(f) for f, g in zip(picked, labels)])
    mean, std = x.mean(0), x.std(0) + 1e-6
    classes = np.unique(y)
    if len(classes) == 1:
        return {"mean": mean.tolist(), "std": std.tolist(), "classes": classes.tolist(),
                "coef": [[0.0] * x.shape[1]], "intercept": [0.0]}
    clf = cls(max_iter=2000, C=1.0).fit((x - mean) / std, y)
    coef, intercept = clf.coef_, clf.intercept_
    if len(classes) == 2:  # sklearn stores one row for two classes
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    return {"mean": mean.tolist(), "std": std.tolist(), "classes": classes.tolist(),
            "coef": np.asarray(coef).tolist(), "intercept": np.asarray(intercept).tolist()}


def probabilities(model: dict, features: np.ndarray, n_groups: int | None = None) -> np.ndarray:
    """Group probabilities of one image (mean of its patches' softmax)."""
    x = (features - np.asarray(model["mean"])) / np.asarray(model["std"])
    logits = x @ np.asarray(model["coef"]).T + np.asarray(model["intercept"])
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    mean = p.mean(0)
    out = np.zeros(n_groups or (max(model["classes"]) + 1))
    out[np.asarray(model["classes"])] = mean
    return out
