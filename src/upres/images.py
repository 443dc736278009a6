"""Image files in and out: 8/16-bit PNG, JPEG, WebP; gray, RGB, RGBA. Arrays are HxW or HxWxC in
RGB(A) order, dtype uint8 or uint16, as decoded; writes are atomic."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from upres.fileio import atomic_write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class ImageError(ValueError):
    """An image cannot be read or written; the message names the file and the problem."""


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file into an RGB(A) or gray array of its own bit depth."""
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ImageError(f"{path}: cannot read file ({err.strerror or err})") from None
    if raw.size == 0:
        raise ImageError(f"{path}: file is empty")
    img = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError(f"{path}: cannot decode image (not an image, unsupported format, "
                         "or truncated)")
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path}: unsupported sample type {img.dtype} (expected 8 or 16 bit)")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        if img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        elif img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
        else:
            raise ImageError(f"{path}: unsupported channel count {img.shape[2]}")
    return img


def encode_image(img: np.ndarray, suffix: str) -> bytes:
    """Encode an RGB(A)/gray array; 16-bit samples need PNG (or TIFF)."""
    suffix = suffix.lower()
    if img.dtype == np.uint16 and suffix not in (".png", ".tif", ".tiff"):
        raise ImageError(f"16-bit images can be written as PNG or TIFF, not {suffix}")
    if img.ndim == 3 and img.shape[2] == 4 and suffix not in (".png", ".webp", ".tif", ".tiff"):
        raise ImageError(f"images with alpha can be written as PNG, WebP or TIFF, not {suffix}")
    if img.ndim == 3:
        code = cv2.COLOR_RGB2BGR if img.shape[2] == 3 else cv2.COLOR_RGBA2BGRA
        img = cv2.cvtColor(img, code)
    params = []
    if suffix in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, 95]
    elif suffix == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, 101]  # >100 means lossless
    ok, buf = cv2.imencode(suffix, img, params)
    if not ok:
        raise ImageError(f"cannot encode image as {suffix}")
    return buf.tobytes()


def write_image(path: str | Path, img: np.ndarray) -> None:
    """Write atomically (temp file + rename), format by the file's extension."""
    path = Path(path)
    try:
        data = encode_image(img, path.suffix)
    except ImageError as err:
        raise ImageError(f"{path}: {err}") from None
    atomic_write_bytes(path, data)


def max_value(dtype: np.dtype) -> int:
    return 65535 if np.dtype(dtype) == np.uint16 else 255


def to_float(img: np.ndarray) -> np.ndarray:
    """Samples to float32 in [0, 1]."""
    return img.astype(np.float32) / max_value(img.dtype)


def from_float(img: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float samples in [0, 1] to integers of ``dtype``, clipped and rounded."""
    peak = max_value(dtype)
    return np.clip(np.rint(img * peak), 0, peak).astype(dtype)
