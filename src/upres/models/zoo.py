"""What upres needs from spandrel (``pip install 'upres[zoo]'``), the loader behind chaiNNer and
ComfyUI: its network classes, its record of each network's size requirements and safe dtypes,
and its detection of any SR state dict. The families themselves are entries of
``upres.models.registry``.

Imports neither PyTorch nor spandrel at import time (configs validate without them)."""

from __future__ import annotations

import importlib
import inspect
import json
import math
import warnings

from upres.errors import WeightsError
from upres.models.descriptor import ModelDescriptor

ZOO_HINT = "pip install 'upres[zoo]'  (or: pip install spandrel)"


def spandrel_class(path: str):
    """The ``nn.Module`` class at ``"Module:Class"`` under ``spandrel.architectures``."""
    module, cls = path.split(":")
    return getattr(importlib.import_module(f"spandrel.architectures.{module}"), cls)


def plain(hparams: dict) -> dict:
    """The JSON-able hyperparameters (layers and callables keep their defaults on rebuild)."""
    def ok(v) -> bool:
        if isinstance(v, list | tuple):
            return all(ok(x) for x in v)
        return v is None or isinstance(v, bool | int | float | str)

    return {k: list(v) if isinstance(v, tuple) else v for k, v in hparams.items() if ok(v)}


def is_spandrel_module(model) -> bool:
    return type(model).__module__.startswith("spandrel.") and hasattr(model, "hyperparameters")


def _spandrel_descriptor(state_dict: dict, source: str):
    """spandrel's descriptor of a state dict, its network built on the meta device (detection
    reads only names and shapes)."""
    import torch

    try:
        from spandrel import MAIN_REGISTRY, UnsupportedModelError
    except ImportError:
        raise WeightsError(f"{source}: not an RRDBNet state dict, and the other architectures "
                           f"need spandrel: {ZOO_HINT}") from None
    try:
        try:
            with torch.device("meta"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "copying ... to a meta parameter is a no-op"
                return MAIN_REGISTRY.load(state_dict)
        except (RuntimeError, NotImplementedError):  # a network that computes at build time
            return MAIN_REGISTRY.load(state_dict)
    except UnsupportedModelError:
        raise WeightsError(f"{source}: the state dict matches no architecture upres or spandrel "
                           f"knows; first keys: {', '.join(list(state_dict)[:4])}") from None
    except Exception as err:  # spandrel recognised it but could not build it
        raise WeightsError(f"{source}: spandrel could not load it ({err})") from None


def _check_purpose(desc, source: str) -> None:
    """Only image-to-image SR (scale 1-8) runs here: face restoration and inpainting do not."""
    from spandrel import ImageModelDescriptor

    name = desc.architecture.name
    if not isinstance(desc, ImageModelDescriptor) or desc.purpose not in ("SR", "Restoration"):
        raise WeightsError(f"{source}: {name} is a {desc.purpose} model, not super-resolution; "
                           "upres runs SR and restoration models (scale 1-8)")
    if not 1 <= desc.scale <= 8:
        raise WeightsError(f"{source}: {name} model of scale {desc.scale}; upres runs scales 1-8")


def detect(state_dict: dict, source: str):
    """(the module spandrel built on the meta device, spandrel's architecture id, the
    hyperparameters) of any SR state dict spandrel recognises."""
    desc = _spandrel_descriptor(state_dict, source)
    _check_purpose(desc, source)
    return desc.model, desc.architecture.id, plain(desc.model.hyperparameters)


def is_spandrel_arch(arch: str) -> bool:
    """Whether spandrel (if installed) knows an architecture id."""
    try:
        from spandrel import MAIN_REGISTRY
    except ImportError:
        return False
    return arch in MAIN_REGISTRY


def load_any(state_dict: dict, source: str):
    """A module for a state dict of an architecture outside the registry (inference only)."""
    from spandrel import ModelLoader

    _check_purpose(_spandrel_descriptor(state_dict, source), source)
    return ModelLoader().load_from_state_dict(state_dict).model.eval()


def describe(model, arch: str | None = None, width_key: str | None = None) -> ModelDescriptor:
    """The descriptor of a spandrel module, from spandrel's own record of its size requirements
    and safe dtypes (kept on the module: its hyperparameters never change). ``arch`` and
    ``width_key`` come from its registry entry (else spandrel's id and 64 channels)."""
    key = json.dumps([arch, width_key, plain(model.hyperparameters)], sort_keys=True)
    cached = model.__dict__.get("_upres_descriptor")
    if cached is not None and cached[0] == key:
        return cached[1]
    descriptor = _describe(model, arch, width_key)
    model.__dict__["_upres_descriptor"] = (key, descriptor)
    return descriptor


def _describe(model, arch: str | None, width_key: str | None) -> ModelDescriptor:
    desc = _spandrel_descriptor(model.state_dict(), type(model).__name__)
    req = desc.size_requirements
    dtypes = ("fp32",) + (("bf16",) if desc.supports_bfloat16 else ()) + (
        ("fp16",) if desc.supports_half else ())
    hparams = plain(model.hyperparameters)
    width = hparams.get(width_key, 64) if width_key else 64
    multiple = req.multiple_of
    window = hparams.get("window_size")
    if isinstance(window, int) and window > 0:  # window attention: whole windows, no padding inside
        multiple = math.lcm(multiple, window)
    return ModelDescriptor(arch=arch or desc.architecture.id, scale=desc.scale,
                           in_channels=desc.input_channels, out_channels=desc.output_channels,
                           size_multiple=multiple, min_size=req.minimum, dtypes=dtypes,
                           activation_channels=int(width) if isinstance(width, int) else 64,
                           hparams=hparams)


def _json_type(annotation, default) -> str | None:
    """The table's type name of a constructor argument; None for arguments that are not plain
    data (layers, callables), which keep the network's default."""
    text = str(annotation) if annotation is not None else ""
    if "Callable" in text or isinstance(default, type) or callable(default):
        return None
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int) and "float" not in text:
        return "int"
    if isinstance(default, int | float):
        return "float"
    if isinstance(default, str):
        return "str"
    if isinstance(default, list | tuple):
        inner = "float" if any(isinstance(v, float) for v in default) else "int"
        return f"list[{inner}]"
    if default is None:
        return "float | None"
    return None


def signature_table(cls) -> dict[str, dict]:
    """argument -> {"type", "default"} from a network class's constructor signature."""
    table = {}
    for arg in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if arg.kind in (arg.VAR_POSITIONAL, arg.VAR_KEYWORD):
            continue
        default = None if arg.default is inspect.Parameter.empty else arg.default
        kind = _json_type(arg.annotation if arg.annotation is not inspect.Parameter.empty
                          else None, default)
        if kind is not None or arg.default is inspect.Parameter.empty:
            value = list(default) if isinstance(default, tuple) else default
            table[arg.name] = {"type": kind or "int", "default": value}
    return table
