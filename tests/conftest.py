"""Fixtures only; shared helpers live in ``helpers.py``."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import photo as _photo
from helpers import tiny_rrdbnet
from upres.io import published
from upres.io.loading import save_model
from upres.models import RRDBNet


@pytest.fixture
def tiny_model() -> RRDBNet:
    return tiny_rrdbnet()


@pytest.fixture
def model_file(tmp_path):
    """A tiny RRDBNet saved as safetensors."""
    path = tmp_path / "tiny.safetensors"
    save_model(tiny_rrdbnet(), path)
    return path


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real 512x512 RGB uint8 photo."""
    return _photo("astronaut")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Pretrained conversions go to a per-session cache, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under ``make test`` (UPRES_NO_SKIPS=1) every optional extra is installed, so a skip means
    a missing install step: it fails instead of passing quietly."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("UPRES_NO_SKIPS") == "1" and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped under UPRES_NO_SKIPS=1 (make test): {report.longrepr}"


@pytest.fixture
def published_file(tmp_path, tiny_model) -> Path:
    path = tmp_path / "served" / "tiny.pth"
    path.parent.mkdir()
    torch.save({"params_ema": tiny_model.state_dict()}, path)
    return path


@pytest.fixture
def published_entry(published_file, monkeypatch, tmp_path) -> published.Published:
    """A registry entry for the tiny file (as a published file's entry pins it), and a cache of
    this test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = published_file.read_bytes()
    entry = replace(published.PUBLISHED["craft-x4"], name="tiny-x4", family="RRDBNet",
                    urls=(published_file.as_uri(),), sha256=hashlib.sha256(data).hexdigest(),
                    size=len(data))
    monkeypatch.setitem(published.PUBLISHED, "tiny-x4", entry)
    return entry
