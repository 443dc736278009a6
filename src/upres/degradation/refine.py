"""LR-consistency refinement (iterative back-projection): nudge an SR output until degrading it
with the estimated kernel reproduces the LR input. It helps only when the kernel is right and
the LR is clean, so ``upres predict --refine`` applies it only where validation PSNR improves."""

from __future__ import annotations

import cv2
import numpy as np

from upres.degradation.kernels import apply_kernel


def back_project(sr: np.ndarray, lr: np.ndarray, kernel: np.ndarray, scale: int,
                 iterations: int = 5, step: float = 1.0) -> np.ndarray:
    """``sr`` (H x W x C float, 0..1) corrected so that ``apply_kernel(sr)`` approaches ``lr``
    (h x w x C float, 0..1): each round adds the bicubic-upsampled LR error."""
    out = np.array(sr, np.float32, copy=True)
    h, w = out.shape[:2]
    for _ in range(iterations):
        error = np.asarray(lr, np.float32) - apply_kernel(out, kernel, scale)
        out += step * cv2.resize(error, (w, h), interpolation=cv2.INTER_CUBIC).reshape(out.shape)
        np.clip(out, 0.0, 1.0, out=out)
    return out


class Refiner:
    """Back-projection with the kernel of each image's fingerprint group (from the blind LR
    classifier), limited to the groups in ``enabled`` and to labels at least ``threshold``
    confident (both chosen on validation)."""

    def __init__(self, fingerprint, iterations: int = 5, step: float = 1.0) -> None:
        self.fp, self.iterations, self.step = fingerprint, iterations, step
        self.enabled: set[int] = set(range(len(fingerprint.groups)))
        self.threshold = 0.0

    def label(self, lr_rgb: np.ndarray) -> tuple[int, float]:
        """The image's group and the classifier's confidence in it."""
        group, p = self.fp.label(np.clip(np.rint(lr_rgb * 255), 0, 255).astype(np.uint8))
        return group, float(p[group])

    def refine(self, sr: np.ndarray, lr_rgb: np.ndarray, group: int) -> np.ndarray:
        return back_project(sr, lr_rgb, self.fp.kernel(group), self.fp.scale, self.iterations,
                            self.step)

    def __call__(self, sr: np.ndarray, lr_rgb: np.ndarray) -> np.ndarray:
        group, confidence = self.label(lr_rgb)
        if group not in self.enabled or confidence < self.threshold:
            return sr
        return self.refine(sr, lr_rgb, group)
