"""Architectures: ``registry.py`` holds one uniform ``Architecture`` entry per family (upres's
RRDBNet and the curated spandrel families), so adding a family is one entry; the engine,
training, predict and export read only the entry and the ``ModelDescriptor``.

``ModelDescriptor`` and the registry import no PyTorch; networks are loaded on first use, so
that configs validate and inference on a cached OpenVINO model runs without PyTorch."""

from __future__ import annotations

from importlib import import_module

from upres.models.descriptor import ModelDescriptor

__all__ = ["ARCHITECTURES", "Architecture", "ModelDescriptor", "RRDBNet", "build_model",
           "describe", "detect_architecture"]

_LAZY = {"ARCHITECTURES": "upres.models.registry", "Architecture": "upres.models.registry",
         "build_model": "upres.models.registry", "describe": "upres.models.registry",
         "detect_architecture": "upres.models.registry", "RRDBNet": "upres.models.rrdbnet"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'upres.models' has no attribute {name!r}")
