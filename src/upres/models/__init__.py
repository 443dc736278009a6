"""Architectures: a small explicit registry (``registry.py``) of name -> network, descriptor and
state-dict detector. Adding a family means one module beside ``rrdbnet.py`` and one entry in the
registry; the engine, training, predict and export read only the ``ModelDescriptor``.

``ModelDescriptor`` imports no PyTorch; the rest is loaded on first use, so that inference on a
cached OpenVINO model never imports PyTorch."""

from __future__ import annotations

from importlib import import_module

from upres.models.descriptor import ModelDescriptor

__all__ = ["ARCHITECTURES", "Architecture", "ModelDescriptor", "RRDBNet", "build_model",
           "describe", "detect_architecture"]

_LAZY = {"ARCHITECTURES": "registry", "Architecture": "registry", "build_model": "registry",
         "describe": "registry", "detect_architecture": "registry", "RRDBNet": "rrdbnet"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"upres.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'upres.models' has no attribute {name!r}")
