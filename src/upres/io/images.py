"""Image files in and out: 8/16-bit PNG, JPEG, WebP; gray, RGB, RGBA. Arrays are HxW or HxWxC in
RGB(A) order, dtype uint8 or uint16, as decoded; writes are atomic."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from upres.errors import ImageError
from upres.io.files import atomic_path, atomic_write_bytes
from upres.io.limits import DEFAULT_MAX_PIXELS, MAX_PIXELS_LIMIT

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# BT.601 luma weights: gray images run through RGB models and come back as this mix.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

__all__ = ["IMAGE_SUFFIXES", "LUMA", "ImageError", "list_images", "read_image", "write_image",
           "encode_image", "to_float", "from_float", "gray_to_rgb", "luma", "scale_mismatch",
           "DEFAULT_MAX_PIXELS", "MAX_PIXELS_LIMIT"]


# EXIF orientation -> (transpose, rot90 turns counter-clockwise, flip left-right), as
# PIL.ImageOps.exif_transpose applies it: viewers show the image turned this way.
_ORIENTATION = {2: (False, 0, True), 3: (False, 2, False), 4: (False, 2, True), 5: (True, 0, False),
                6: (False, 3, False), 7: (True, 2, False), 8: (False, 1, False)}
_PIL_LOCK = threading.Lock()


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name. Dangling symbolic links with an image
    suffix are listed too, so that reading them reports the problem instead of skipping it."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                  and (p.is_file() or (p.is_symlink() and not p.exists())))


# Formats upres reads, as Pillow names them (MPO: a camera JPEG with a preview picture).
READABLE = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "WEBP": "WebP", "BMP": "BMP", "TIFF": "TIFF"}
HEAD_BYTES = 1 << 20  # what the header is read from
SLACK_BYTES = 16 << 20  # beyond the raw size of the pixels, what a file may hold (metadata)


@dataclass(frozen=True)
class Header:
    size: tuple[int, int]  # (width, height) as stored
    orientation: int  # EXIF orientation (1: as stored)
    format: str  # Pillow's name
    frames: int


def decoder_problem(err: BaseException) -> str:
    """What a decoder raised, in a few words (a mutated TIFF makes Pillow raise ``KeyError``,
    ``TypeError`` or ``struct.error``, not only ``OSError``)."""
    text = str(err).strip().splitlines()[-1] if str(err).strip() else ""
    return f"{type(err).__name__}{': ' + text[:120] if text else ''}"


def probe(path: Path, raw: bytes) -> Header | None:
    """The header of an image file, without decoding its pixels; None where Pillow does not
    know the format; an ``ImageError`` naming the file where the header is damaged (whatever
    Pillow raised)."""
    from PIL import Image, UnidentifiedImageError

    with _PIL_LOCK:  # Pillow's own bomb check is a module global: off for the header read only
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(io.BytesIO(raw)) as im:
                if im.format == "PNG":  # PNG's getexif() decodes the image: read the header's only
                    exif = Image.Exif()
                    if "exif" in im.info:
                        exif.load(im.info["exif"])
                else:
                    exif = im.getexif()
                orientation = exif.get(0x0112, 1)
                return Header(im.size, orientation if orientation in _ORIENTATION else 1,
                              im.format or "?", getattr(im, "n_frames", 1))
        except UnidentifiedImageError:
            return None
        except MemoryError:
            raise ImageError(f"{path}: the header asks for more memory than there is; the file is "
                             "damaged") from None
        except Exception as err:  # (a decoder's failure is the file's, whatever it is)
            raise ImageError(f"{path}: not an image upres reads, or its header is damaged "
                             f"({decoder_problem(err)})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def read_header(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Header:
    """Check a file before reading it whole: a format upres reads, one frame, at most
    ``max_pixels`` pixels, and no more bytes than such an image can need; each problem is an
    ``ImageError`` naming the file."""
    path = Path(path)
    try:
        length = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as err:
        raise ImageError(f"{path}: cannot read file ({err.strerror or err})") from None
    if not length:
        raise ImageError(f"{path}: file is empty")
    header = probe(path, head)
    if header is None:
        raise ImageError(f"{path}: not an image upres reads (PNG, JPEG, WebP, BMP or TIFF), or "
                         "its header is damaged")
    if header.format not in READABLE:
        raise ImageError(f"{path}: a {header.format} file; upres reads PNG, JPEG, WebP, BMP and "
                         "TIFF")
    if header.frames > 1 and header.format != "MPO":
        raise ImageError(f"{path}: {header.frames} frames (animated or multi-page); upres "
                         "upscales still images: extract the frames first")
    w, h = header.size
    if w * h > max_pixels:
        raise ImageError(f"{path}: image too large: {w}x{h} = {w * h:,} pixels, over the limit "
                         f"of {max_pixels:,} (--max-pixels)")
    if length > w * h * 8 + SLACK_BYTES:
        raise ImageError(f"{path}: {length / 2**20:.0f} MB is more than a {w}x{h} image can "
                         "hold; the file is damaged or not what its header says")
    return header


def header_size(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) as shown (EXIF orientation applied), from the header alone."""
    header = read_header(path, max_pixels)
    w, h = header.size
    return (h, w) if header.orientation in (5, 6, 7, 8) else (w, h)


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a decoded array the way EXIF ``orientation`` says it is shown."""
    if orientation not in _ORIENTATION:
        return img
    transpose, turns, flip = _ORIENTATION[orientation]
    if transpose:
        img = img.swapaxes(0, 1)
    img = np.rot90(img, turns)
    return np.ascontiguousarray(img[:, ::-1] if flip else img)


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file into an RGB(A) or gray array of its own bit depth, turned as its
    EXIF orientation says; the header is checked first (``read_header``), so an image too
    large, of another format, animated, or larger on disk than its pixels is refused before
    it is read."""
    path = Path(path)
    header = read_header(path, max_pixels)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ImageError(f"{path}: cannot read file ({err.strerror or err})") from None
    try:
        img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    except MemoryError:
        raise ImageError(f"{path}: decoding needs more memory than there is; the file is damaged "
                         "or larger than its header says") from None
    except Exception as err:  # (cv2.error, or whatever a codec raises)
        raise ImageError(f"{path}: cannot decode image ({decoder_problem(err)})") from None
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
    return apply_orientation(img, header.orientation)


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


def write_image(path: str | Path, img: np.ndarray, overwrite: bool = True) -> None:
    """Write atomically (temp file + rename), format by the file's extension; an existing file
    is replaced only with ``overwrite`` (checked at the rename)."""
    path = Path(path)
    try:
        data = encode_image(img, path.suffix)
    except ImageError as err:
        raise ImageError(f"{path}: {err}") from None
    except cv2.error as err:
        raise ImageError(f"{path}: cannot encode ({str(err).strip().splitlines()[-1]})") from None
    atomic_write_bytes(path, data, overwrite)


def max_value(dtype: np.dtype) -> int:
    return 65535 if np.dtype(dtype) == np.uint16 else 255


def to_float(img: np.ndarray) -> np.ndarray:
    """Samples to float32 in [0, 1]."""
    return img.astype(np.float32) / max_value(img.dtype)


def from_float(img: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float samples in [0, 1] to integers of ``dtype``, clipped and rounded."""
    peak = max_value(dtype)
    out = np.multiply(img, np.float32(peak), dtype=np.float32)  # one temporary, then in place
    np.rint(out, out=out)
    np.clip(out, 0, peak, out=out)
    return out.astype(dtype)


def gray_to_rgb(img: np.ndarray) -> np.ndarray:
    """HxW -> HxWx3 by repeating the samples; RGB passes through."""
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img


def luma(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an HxWx3 array as float32, in the samples' own units; a gray HxW array
    passes through (as float32)."""
    img = np.asarray(img, dtype=np.float32)
    return img @ LUMA if img.ndim == 3 else img


def scale_mismatch(lr: np.ndarray, hr: np.ndarray, scale: int, lr_path, hr_path) -> str | None:
    """The problem when ``hr`` is not exactly ``scale`` x ``lr`` in both sides, else None."""
    if lr.shape[0] * scale == hr.shape[0] and lr.shape[1] * scale == hr.shape[1]:
        return None
    return (f"{hr_path}: size {hr.shape[1]}x{hr.shape[0]} is not {scale} x the LR size "
            f"{lr.shape[1]}x{lr.shape[0]} of {lr_path}")


def write_png_rows(path: str | Path, rows, width: int, height: int, gray: bool, bitdepth: int,
                   overwrite: bool = True) -> None:
    """Write a PNG from an iterator of packed rows (bytes; 16-bit samples big-endian), so that
    no more than a row need be in memory; atomic like ``write_image``."""
    import png

    writer = png.Writer(width, height, greyscale=gray, bitdepth=bitdepth, compression=6)
    with atomic_path(path, overwrite) as tmp, open(tmp, "wb") as f:
        writer.write_packed(f, rows)
