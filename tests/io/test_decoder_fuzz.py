"""Every decoder failure is an ``ImageError`` naming the file: a seeded mutation fuzz over PNG,
JPEG, WebP, TIFF and BMP (bytes flipped, cut, repeated, inserted) where each damaged file either
decodes to an image or is refused by name; nothing else escapes. The longer run is
``benchmarks/bench_decoder_fuzz.py``."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from upres.errors import ImageError
from upres.io import images

FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
CASES = 40  # mutations per format here; the benchmark runs thousands


def encoded(fmt: str, seed: int = 0) -> bytes:
    """A small photo-like image (a gradient with noise) in ``fmt``, with EXIF where it takes it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:24, :32]
    img = np.stack([x * 8, y * 10, (x + y) * 4], -1) + rng.integers(0, 16, (24, 32, 3))
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(
        buf, fmt, **({"exif": exif} if fmt in ("JPEG", "WEBP", "PNG", "TIFF") else {}))
    return buf.getvalue()


def mutate(raw: bytes, rng: np.random.Generator) -> bytes:
    """One seeded damage: bytes overwritten, a cut, a stretch repeated, or bytes inserted; the
    first 64 bytes (the headers, where parsers branch) are hit most."""
    data = bytearray(raw)
    kind = rng.integers(4)
    where = int(rng.integers(min(64, len(data)))) if rng.random() < 0.6 else int(rng.integers(len(data)))
    if kind == 0:
        for _ in range(int(rng.integers(1, 5))):
            data[min(where + int(rng.integers(8)), len(data) - 1)] = int(rng.integers(256))
    elif kind == 1:
        data = data[:max(where, 1)]
    elif kind == 2:
        data[where:where] = data[where:where + int(rng.integers(1, 32))] * int(rng.integers(2, 8))
    else:
        data[where:where] = bytes(rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8))
    return bytes(data)


def outcome(path) -> str:
    """'decoded' or 'refused'; anything else than an ``ImageError`` naming the file propagates."""
    try:
        img = images.read_image(path)
    except ImageError as err:
        assert str(path) in str(err), str(err)
        return "refused"
    assert img.dtype in (np.uint8, np.uint16) and img.ndim in (2, 3)
    return "decoded"


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_damaged_file_decodes_or_is_refused_by_name(fmt, tmp_path):
    raw, rng = encoded(fmt), np.random.default_rng(list(FORMATS).index(fmt))
    path = tmp_path / f"x{FORMATS[fmt]}"
    seen = set()
    for _ in range(CASES):
        path.write_bytes(mutate(raw, rng))
        seen.add(outcome(path))
    assert "refused" in seen  # the damage reached the decoder


def test_a_tiff_pillow_failed_on_with_a_typeerror_is_refused_by_name(tmp_path):
    """Case 196 of the TIFF stream above (found by the benchmark): Pillow's header parser raised
    ``TypeError: Missing dimensions``, which escaped and aborted a batch with a traceback."""
    raw, rng = encoded("TIFF"), np.random.default_rng(list(FORMATS).index("TIFF"))
    for _ in range(197):
        data = mutate(raw, rng)
    path = tmp_path / "case196.tif"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=rf"^{path}: not an image upres reads, or its header is "
                                         r"damaged \(TypeError: Missing dimensions\)$"):
        images.read_image(path)
