"""The explicit registry of architectures: name -> network, descriptor and state-dict detector.
Adding a family means one module beside ``rrdbnet.py`` and one entry here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from upres.errors import ArchitectureError
from upres.models import rrdbnet
from upres.models.descriptor import ModelDescriptor
from upres.models.rrdbnet import RRDBNet


@dataclass(frozen=True)
class Architecture:
    name: str
    module: type[nn.Module]
    describe: Callable[[nn.Module], ModelDescriptor]
    detect: Callable[[dict[str, torch.Tensor]], bool]
    infer_hparams: Callable[[dict[str, torch.Tensor], str], dict]


ARCHITECTURES: dict[str, Architecture] = {
    rrdbnet.NAME: Architecture(rrdbnet.NAME, RRDBNet, rrdbnet.describe, rrdbnet.detect,
                               rrdbnet.infer_hparams),
}


def build_model(arch: str, hparams: dict) -> nn.Module:
    """Build an architecture by name from recorded hyperparameters: upres's own, or a curated
    spandrel family (``upres.models.zoo``)."""
    from upres.models import zoo

    if arch in ARCHITECTURES:
        try:
            return ARCHITECTURES[arch].module(**hparams)
        except TypeError as err:  # an unknown or missing constructor argument
            raise ArchitectureError(f"{arch}: bad hyperparameters {hparams} ({err})") from None
    if arch in zoo.FAMILIES:
        try:
            return zoo.build(arch, hparams)
        except ImportError:
            raise ArchitectureError(f"{arch} comes from spandrel: {zoo.ZOO_HINT}") from None
        except (TypeError, ValueError, AssertionError, RuntimeError) as err:
            raise ArchitectureError(f"{arch}: bad hyperparameters {hparams} ({err})") from None
    known = ", ".join([*ARCHITECTURES, *zoo.FAMILIES])
    raise ArchitectureError(f"unknown architecture {arch!r}; known: {known}")


def describe(model: nn.Module) -> ModelDescriptor:
    """The descriptor of a registered architecture's module (or any spandrel module)."""
    from upres.models import zoo

    for entry in ARCHITECTURES.values():
        if isinstance(model, entry.module):
            return entry.describe(model)
    if zoo.is_spandrel_module(model):
        return zoo.describe(model)
    raise ArchitectureError(f"{type(model).__name__} is not a registered architecture "
                            f"({', '.join(ARCHITECTURES)} or a spandrel module); pass a "
                            "ModelDescriptor with it")


def detect_architecture(state_dict: dict[str, torch.Tensor], source: str) -> tuple[str, dict]:
    """Architecture name and hyperparameters of a state dict, from its keys and shapes: upres's
    own first, then every SR architecture spandrel recognises."""
    from upres.models import zoo

    for entry in ARCHITECTURES.values():
        if entry.detect(state_dict):
            return entry.name, entry.infer_hparams(state_dict, source)
    return zoo.detect(state_dict, source)
