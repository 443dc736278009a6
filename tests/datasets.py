"""Small competition-style folders made from scikit-image's real photos (no ../shared)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from skimage import data

from upres import images

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def photo(name: str) -> np.ndarray:
    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def write_pair(root: Path, split: str, stem: str, hr: np.ndarray, scale: int = 4) -> None:
    """An HR image and its area-downscaled LR, as ``split/hr/stem.png`` and ``split/lr/stem.png``."""
    h, w = hr.shape[:2]
    lr = cv2.resize(hr, (w // scale, h // scale), interpolation=cv2.INTER_AREA)
    images.write_image(root / split / "hr" / f"{stem}.png", hr)
    images.write_image(root / split / "lr" / f"{stem}.png", lr)


def make_competition(root: Path, train_size: int = 256, val_size: int = 96) -> Path:
    """Per photo: a training region from the left half and a disjoint, textured validation
    region centred in the right half, so validation measures held-out pixels."""
    for i, name in enumerate(PHOTOS):
        img = photo(name)
        h, w = img.shape[:2]
        train_h, train_w = min(train_size, h) // 4 * 4, min(train_size, w // 2) // 4 * 4
        write_pair(root, "train", f"{i:04d}", img[:train_h, :train_w])
        y, x = h // 2 - val_size // 2, 3 * w // 4 - val_size // 2
        write_pair(root, "val", f"{i:04d}", img[y:y + val_size, x:x + val_size])
    return root
