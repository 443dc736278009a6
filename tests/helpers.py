"""Test helpers: tiny models, a purely local model, and small competition-style folders made from
scikit-image's real photos (no ../shared). Imported by tests as ``helpers``."""

from __future__ import annotations

import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from upres.degradation.recipes import degrade, parse_recipe
from upres.io import images
from upres.models import ModelDescriptor, RRDBNet

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def tiny_rrdbnet(scale: int = 4, seed: int = 0, **kw) -> RRDBNet:
    torch.manual_seed(seed)
    args = dict(num_feat=8, num_block=1, num_grow_ch=4, scale=scale) | kw
    return RRDBNet(**args).eval()


class NearestX4(nn.Module):
    """Purely local and rotation-equivariant: nearest-neighbour x4 (with its descriptor)."""

    descriptor = ModelDescriptor(arch="nearest", scale=4)

    def forward(self, x):
        return F.interpolate(x, scale_factor=4, mode="nearest")


def free_port() -> int:
    """A free TCP port on loopback, for a torch.distributed rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def skimage_data():
    return pytest.importorskip("skimage.data")


def photo(name: str) -> np.ndarray:
    """A real RGB uint8 photo shipped by scikit-image."""
    img = getattr(skimage_data(), name)()
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


def hr_folder(root: Path, count: int = 16, side: int = 160) -> Path:
    """``count`` HR crops of scikit-image photos."""
    folder = root / "hr_src"
    spots = [(name, y, x) for name in ("astronaut", "chelsea", "coffee", "rocket")
             for y, x in ((0, 0), (1, 1), (0, 1), (1, 0))]
    for i, (name, y, x) in enumerate(spots[:count]):
        img = photo(name)
        h, w = img.shape[:2]
        top, left = y * (h - side) // 2 + 40, x * (w - side) // 2 + 40
        images.write_image(folder / f"{i:03d}.png", img[top:top + side, left:left + side])
    return folder


def make_recipe_set(root: Path) -> Path:
    """A competition folder: eight 128x128 training pairs in two LR recipes (bicubic, area),
    two test images in each recipe as test/lr with their test/hr."""
    for i, name in enumerate(PHOTOS):
        img = photo(name)
        for j, (y, x) in enumerate(((0, 0), (img.shape[0] // 2, img.shape[1] // 2))):
            hr = np.ascontiguousarray(img[y:y + 128, x:x + 128])
            recipe = parse_recipe("bicubic" if (i + j) % 2 else "area")
            images.write_image(root / "train" / "hr" / f"{i}{j}.png", hr)
            images.write_image(root / "train" / "lr" / f"{i}{j}.png", degrade(hr, recipe, 4))
    test = np.ascontiguousarray(photo("coffee")[200:328, 300:428])
    for k, recipe in enumerate(("bicubic", "area")):
        images.write_image(root / "test" / "lr" / f"t{k}.png", degrade(test, parse_recipe(recipe), 4))
        images.write_image(root / "test" / "hr" / f"t{k}.png", test)
    return root


class FakeClock:
    """An ``auto`` clock that moves only when a fake training says it trained."""

    def __init__(self, budget: float) -> None:
        self.budget, self.now = budget, 0.0

    def elapsed(self) -> float:
        return self.now

    def left(self) -> float:
        return self.budget - self.now


def patch_in(monkeypatch, name: str, value, *modules) -> None:
    """Replaces NAME in each module that uses it (upres.auto's phase modules import it by name)."""
    for module in modules:
        monkeypatch.setattr(module, name, value)


def assert_learns(model, size: int = 16, steps: int = 12) -> None:
    """A few Adam steps toward bicubic x4 upscaling of random images cut the MSE by 10%."""
    import torch
    from torch.nn import functional as F

    x = torch.rand(2, 3, size, size)
    target = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(steps):
        loss = F.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9, losses


def nearest_rrdbnet():
    """A tiny RRDBNet whose output is the nearest-neighbour upscaling of its input (the dense
    blocks off, every other layer passing the three colour channels on): a sensible start."""
    model = tiny_rrdbnet(num_block=2)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        for name in ("conv_first", "conv_up1", "conv_up2", "conv_hr", "conv_last"):
            weight = getattr(model, name).weight
            for c in range(3):
                weight[c, c, 1, 1] = 1.0
    return model


TINY_TRAIN = ["model.num_feat=8", "model.num_grow_ch=4", "model.num_block=1", "data.crop=32",
              "data.workers=0", "train.batch_size=2", "train.val_every=100", "train.checkpoint_every=2"]


def small_competition(root: Path) -> Path:
    """A competition folder small enough to train on in seconds (``train_tiny``)."""
    return make_competition(root, train_size=96, val_size=48)


def train_tiny(comp: Path, run: Path, cache: Path, *extra: str) -> int:
    """``upres train smoke-cpu`` with a network of a few thousand parameters: the exit code."""
    from upres.cli import main

    return main(["train", "smoke-cpu", "--data", str(comp), "--run-dir", str(run), "--quiet",
                 *TINY_TRAIN, f"data.cache_dir={cache}", *extra])


def assert_round_trips(model, lr: np.ndarray, folder: Path) -> None:
    """Saved as upres's safetensors and as the authors' .pth layout, a model loads back strictly
    as the same class and hyperparameters and upscales ``lr`` to the same pixels."""
    from upres.inference.upscaler import Upscaler
    from upres.io.loading import load_model, save_model

    expect = Upscaler(model, backend="torch", dtype="fp32", tile=0).upscale_array(lr)
    assert expect.shape[:2] == (lr.shape[0] * 4, lr.shape[1] * 4)
    for suffix in ("safetensors", "pth"):
        save_model(model, folder / f"m.{suffix}")
        again = load_model(folder / f"m.{suffix}")
        assert type(again) is type(model) and again.hparams == model.hparams
        out = Upscaler(again, backend="torch", dtype="fp32", tile=0).upscale_array(lr)
        assert np.array_equal(out, expect)
