"""Known LR recipes, and competition-style sets built from any HR folder with them.

A recipe is named by a short string: ``bicubic``, ``bilinear``, ``area``, ``lanczos`` (Pillow's
antialiased resampling, as MATLAB's imresize), ``blur1.2`` (Gaussian blur of that sigma on the HR,
then bicubic), ``jpeg75`` (bicubic, then JPEG at that quality), ``noise5`` (bicubic, then Gaussian
noise of that sigma in 8-bit units). Every random choice comes from the file name, so a set is
rebuilt bit for bit."""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from upres.errors import DataError, listing
from upres.io import images
from upres.io.files import atomic_write_bytes, check_output_folder, staged_folder

DEFAULT_RECIPES = ("bicubic", "bilinear", "area", "lanczos", "blur1.2", "jpeg60", "jpeg90", "noise5")
_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "area": Image.BOX,
             "lanczos": Image.LANCZOS}
_PATTERN = re.compile(r"^(bicubic|bilinear|area|lanczos|blur(\d+(?:\.\d+)?)|jpeg(\d+)|noise(\d+(?:\.\d+)?))$")


@dataclass(frozen=True)
class Recipe:
    name: str
    resample: str = "bicubic"
    blur: float = 0.0  # Gaussian sigma on the HR grid before resampling
    jpeg: int | None = None  # JPEG quality after resampling
    noise: float = 0.0  # Gaussian noise sigma (8-bit units) after resampling


def parse_recipe(name: str) -> Recipe:
    m = _PATTERN.match(name.strip())
    if not m:
        raise DataError(f"unknown recipe {name!r}: use bicubic, bilinear, area, lanczos, blurSIGMA "
                        "(e.g. blur1.2), jpegQUALITY (e.g. jpeg75) or noiseSIGMA (e.g. noise5)")
    if m.group(2):
        return Recipe(name, blur=float(m.group(2)))
    if m.group(3):
        quality = int(m.group(3))
        if not 1 <= quality <= 100:
            raise DataError(f"recipe {name!r}: JPEG quality must be 1..100")
        return Recipe(name, jpeg=quality)
    if m.group(4):
        return Recipe(name, noise=float(m.group(4)))
    return Recipe(name, resample=name)


def seed_of(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:8], "little")


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def add_noise(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, img.shape)
    return np.clip(np.round(img + noise), 0, 255).astype(np.uint8)


def degrade(hr: np.ndarray, recipe: Recipe, scale: int, seed: int = 0) -> np.ndarray:
    """The LR image of an 8-bit RGB HR image (whose sides are multiples of ``scale``)."""
    h, w = hr.shape[:2]
    src = hr
    if recipe.blur:
        src = cv2.GaussianBlur(hr, (0, 0), recipe.blur, borderType=cv2.BORDER_REFLECT)
    lr = np.asarray(Image.fromarray(src).resize((w // scale, h // scale), _RESAMPLE[recipe.resample]))
    if recipe.noise:
        lr = add_noise(lr, recipe.noise, seed)
    if recipe.jpeg is not None:
        lr = jpeg_roundtrip(lr, recipe.jpeg)
    return lr


def crop_to_multiple(img: np.ndarray, scale: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[:h - h % scale, :w - w % scale]


def _read_rgb(path: Path) -> np.ndarray:
    img = images.read_image(path)
    if img.dtype != np.uint8:
        raise DataError(f"{path}: {img.dtype.itemsize * 8}-bit samples; recipes take 8-bit images")
    if img.ndim == 2:
        img = images.gray_to_rgb(img)
    return np.ascontiguousarray(img[..., :3])


def make_set(hr_dir: str | Path, out_dir: str | Path, recipes: list[str] | None = None,
             scale: int = 4, test_fraction: float = 0.25, seed: int = 0,
             overwrite: bool = False) -> dict:
    """Build ``out/train/{lr,hr}`` (each HR image degraded by one recipe, recipes in equal shares)
    and ``out/test/{lr,hr}`` (each held-out HR image degraded by every recipe, named
    ``STEM-RECIPE``), and ``out/recipes.json`` recording each file's recipe. Every input is
    checked first; the set is built in a staging folder that becomes ``out`` only when complete
    (an existing ``out`` with files is replaced only with ``overwrite``)."""
    hr_dir, out_dir = Path(hr_dir), Path(out_dir)
    parsed = [parse_recipe(r) for r in (recipes or DEFAULT_RECIPES)]
    if len({r.name for r in parsed}) != len(parsed):
        raise DataError("each recipe may appear once")
    sources = _check_sources(hr_dir, scale)
    check_output_folder(out_dir, overwrite)
    order = np.random.default_rng([seed, 99]).permutation(len(sources))
    n_test = min(max(1, round(len(sources) * test_fraction)), len(sources) - 1) if test_fraction else 0
    test_idx = set(order[:n_test].tolist())
    record = {"scale": scale, "recipes": [r.name for r in parsed], "source": str(hr_dir),
              "train": {}, "test": {}}
    with staged_folder(out_dir, overwrite) as staging:
        train_pos = 0
        for i, path in enumerate(sources):
            hr = crop_to_multiple(_read_rgb(path), scale)
            if i in test_idx:
                chosen, split = [(f"{path.stem}-{r.name}", r) for r in parsed], "test"
            else:
                chosen, split = [(path.stem, parsed[train_pos % len(parsed)])], "train"
                train_pos += 1
            for name, recipe in chosen:
                lr = degrade(hr, recipe, scale, seed_of(str(seed), name, recipe.name))
                images.write_image(staging / split / "hr" / f"{name}.png", hr)
                images.write_image(staging / split / "lr" / f"{name}.png", lr)
                record[split][name] = recipe.name
        atomic_write_bytes(staging / "recipes.json", json.dumps(record, indent=1).encode())
    return record


def _check_sources(hr_dir: Path, scale: int) -> list[Path]:
    """The HR images, every one checked from its header (readable, large enough) before any
    work; all problems at once."""
    if not hr_dir.is_dir():
        raise DataError(f"{hr_dir}: folder does not exist")
    sources = images.list_images(hr_dir)
    if len(sources) < 2:
        raise DataError(f"{hr_dir}: need at least 2 HR images (found {len(sources)})")
    problems = []
    for path in sources:
        try:
            w, h = images.header_size(path)
        except images.ImageError as err:
            problems.append(str(err))
            continue
        if min(w, h) < 4 * scale:
            problems.append(f"{path}: {w}x{h} is too small for x{scale} pairs")
    if problems:
        raise DataError(f"{len(problems)} problem(s) in {hr_dir}:" + listing(problems))
    return sources


def read_labels(data_dir: str | Path, split: str = "train") -> dict[str, str] | None:
    """File stem -> recipe from a set's ``recipes.json``, or None when the set has none."""
    path = Path(data_dir) / "recipes.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get(split)
