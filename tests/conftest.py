"""Shared fixtures: tiny models and real photos shipped by scikit-image (no ../shared needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from upres.arch import RRDBNet


def tiny_rrdbnet(scale: int = 4, seed: int = 0, **kw) -> RRDBNet:
    torch.manual_seed(seed)
    args = dict(num_feat=8, num_block=1, num_grow_ch=4, scale=scale) | kw
    return RRDBNet(**args).eval()


@pytest.fixture
def tiny_model() -> RRDBNet:
    return tiny_rrdbnet()


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real 512x512 RGB uint8 photo."""
    return data.astronaut()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Pretrained conversions go to a per-session cache, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
