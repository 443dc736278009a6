"""upres: PSNR-first single-image super-resolution with RRDBNet.

The public API: ``RRDBNet`` / ``build_model`` / ``describe`` (architectures), ``load_model`` /
``save_model`` / ``convert`` (weights), ``Upscaler`` (inference), ``psnr`` / ``ssim`` (metrics),
``run_auto`` / ``AutoOptions`` (``upres auto``), ``UpresError`` (the base of every error upres
raises on purpose). The ``upres`` command wraps them. Names are imported on first use, so
``import upres`` (and ``upres --help``) stays fast and imports no torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "RRDBNet": "upres.models",
    "build_model": "upres.models",
    "describe": "upres.models",
    "ModelDescriptor": "upres.models",
    "InferenceOptions": "upres.inference.upscaler",
    "Upscaler": "upres.inference.upscaler",
    "psnr": "upres.scoring.metrics",
    "ssim": "upres.scoring.metrics",
    "convert": "upres.io.loading",
    "load_model": "upres.io.loading",
    "load_weights": "upres.io.loading",
    "save_model": "upres.io.loading",
    "UpresError": "upres.errors",
    "AutoOptions": "upres.auto",
    "run_auto": "upres.auto",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'upres' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
