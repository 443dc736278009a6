"""The modern SR architectures, from spandrel (``pip install 'upres[zoo]'``): a curated list of
families upres trains and exports, their hyperparameter schemas and named presets, and loading of
any SR model spandrel recognises.

This module imports neither PyTorch nor spandrel: the training config validates against it. The
hyperparameter tables (``zoo_params.json``) are spandrel's constructor signatures, written by
``python -m upres.models.zoo`` and checked against the installed spandrel by the tests."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from upres.errors import WeightsError
from upres.models.descriptor import ModelDescriptor

PARAMS_FILE = Path(__file__).with_name("zoo_params.json")
ZOO_HINT = "pip install 'upres[zoo]'  (or: pip install spandrel)"


@dataclass(frozen=True)
class Family:
    """One curated architecture: where spandrel defines it and what an SR model of it needs."""

    name: str  # spandrel's architecture id, also upres's ``model.arch``
    cls: str  # "module:Class" under spandrel.architectures
    scale_key: str  # the constructor argument holding the scale
    width_key: str  # the feature width (activation memory grows with it)
    sr_defaults: dict = field(default_factory=dict)  # beyond spandrel's defaults, for SR
    paper: str = ""
    # Measured with tiny models against PyTorch fp32 (torch 2.14.1, OpenVINO 2026.4.1): why
    # OpenVINO conversion or ONNX export is not offered ("" = works). A crash cannot be caught,
    # so upres does not try.
    no_openvino: str = ""
    no_onnx: str = ""


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("SwinIR", "SwinIR:SwinIR", "upscale", "embed_dim",
           {"upsampler": "pixelshuffle", "img_range": 1.0, "window_size": 8, "mlp_ratio": 2.0},
           "Liang et al., SwinIR, ICCVW 2021"),
    Family("HAT", "HAT:HAT", "upscale", "embed_dim",
           {"img_range": 1.0, "window_size": 16, "mlp_ratio": 2.0},
           "Chen et al., HAT, CVPR 2023"),
    Family("DAT", "DAT:DAT", "upscale", "embed_dim", {"img_range": 1.0},
           "Chen et al., Dual Aggregation Transformer, ICCV 2023",
           no_openvino="OpenVINO's converter crashes on it (segmentation fault)",
           no_onnx="the exported graph fails in onnxruntime (a LayerNormalization of size 0)"),
    Family("ATD", "ATD:ATD", "upscale", "embed_dim",
           {"img_range": 1.0, "upsampler": "pixelshuffle", "window_size": 16},
           "Zhang et al., Adaptive Token Dictionary, CVPR 2024",
           no_onnx="torch.onnx cannot convert its exported program"),
    Family("DRCT", "DRCT:DRCT", "upscale", "embed_dim",
           {"img_range": 1.0, "upsampler": "pixelshuffle"},
           "Hsu et al., DRCT, CVPRW 2024",
           no_onnx="the exported graph runs but differs from PyTorch by up to 0.13"),
    Family("SPAN", "SPAN:SPAN", "upscale", "feature_channels", {"num_in_ch": 3, "num_out_ch": 3},
           "Wan et al., SPAN, CVPRW 2024 (NTIRE 2024 efficient SR)",
           no_onnx="torch.export crashes on it (segmentation fault)"),
    Family("RealPLKSR", "PLKSR:RealPLKSR", "upscaling_factor", "dim", {},
           "Lee et al., PLKSR, 2024; RealPLKSR variant from neosr / traiNNer-redux"),
    Family("PLKSR", "PLKSR:PLKSR", "upscaling_factor", "dim", {},
           "Lee et al., Partial Large Kernel CNNs for efficient SR, 2024"),
    Family("OmniSR", "OmniSR:OmniSR", "up_scale", "num_feat", {},
           "Wang et al., Omni Aggregation Networks, CVPR 2023"),
    Family("SAFMN", "SAFMN:SAFMN", "upscaling_factor", "dim", {"dim": 36},
           "Sun et al., SAFMN, ICCV 2023"),
    Family("RCAN", "RCAN:RCAN", "scale", "n_feats", {},
           "Zhang et al., RCAN, ECCV 2018"),
    Family("Compact", "Compact:Compact", "upscale", "num_feat", {},
           "Wang et al., Real-ESRGAN's SRVGGNetCompact, ICCVW 2021"),
]}


def backend_refusal(arch: str, backend: str) -> str | None:
    """Why a curated family is not converted to ``openvino`` or ``onnx``, else None."""
    family = FAMILIES.get(arch)
    if family is None:
        return None
    return family.no_openvino if backend == "openvino" else family.no_onnx or None


@dataclass(frozen=True)
class Preset:
    arch: str
    params: dict
    source: str


PRESETS: dict[str, Preset] = {
    "swinir-light": Preset("SwinIR", {
        "embed_dim": 60, "depths": [6, 6, 6, 6], "num_heads": [6, 6, 6, 6], "window_size": 8,
        "mlp_ratio": 2.0, "img_size": 64, "upsampler": "pixelshuffledirect"},
        "SwinIR lightweight SR (paper Table 3; official 002_lightweightSR options), 0.9M parameters"),
    "swinir-m": Preset("SwinIR", {
        "embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 8,
        "mlp_ratio": 2.0, "img_size": 48, "upsampler": "pixelshuffle"},
        "SwinIR classical SR, the paper's SwinIR (official 001_classicalSR options), 11.9M"),
    "hat-s": Preset("HAT", {
        "embed_dim": 144, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 16,
        "compress_ratio": 24, "squeeze_factor": 24, "mlp_ratio": 2.0, "img_size": 64},
        "HAT-S (HAT paper, Table 1; official HAT-S_SRx4 options), 9.6M"),
    "hat-m": Preset("HAT", {
        "embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 16,
        "compress_ratio": 3, "squeeze_factor": 30, "mlp_ratio": 2.0, "img_size": 64},
        "HAT (the paper's base model; official HAT_SRx4 options), 20.8M"),
    "hat-l": Preset("HAT", {
        "embed_dim": 180, "depths": [6] * 12, "num_heads": [6] * 12, "window_size": 16,
        "compress_ratio": 3, "squeeze_factor": 30, "mlp_ratio": 2.0, "img_size": 64},
        "HAT-L (HAT paper; official HAT-L_SRx4 options), 40.8M"),
    "dat-light": Preset("DAT", {
        "embed_dim": 60, "depth": [18], "num_heads": [6], "split_size": [8, 32],
        "expansion_factor": 2.0, "resi_connection": "3conv", "upsampler": "pixelshuffledirect"},
        "DAT-light (DAT paper, lightweight SR; official DAT_light_x4 options), 0.6M"),
    "dat-s": Preset("DAT", {
        "embed_dim": 180, "depth": [6] * 6, "num_heads": [6] * 6, "split_size": [8, 16],
        "expansion_factor": 2.0},
        "DAT-S (DAT paper, Table 6; official DAT_S_x4 options), 11.2M"),
    "dat": Preset("DAT", {
        "embed_dim": 180, "depth": [6] * 6, "num_heads": [6] * 6, "split_size": [8, 32],
        "expansion_factor": 4.0},
        "DAT (DAT paper; official DAT_x4 options), 14.8M"),
    "atd-light": Preset("ATD", {
        "embed_dim": 48, "depths": [6, 6, 6, 6], "num_heads": [4, 4, 4, 4], "window_size": 16,
        "category_size": 128, "num_tokens": 64, "reducted_dim": 8, "convffn_kernel_size": 7,
        "mlp_ratio": 1.0, "upsampler": "pixelshuffledirect"},
        "ATD-light (ATD paper; official ATD_light_SRx4 options), 0.8M"),
    "atd": Preset("ATD", {
        "embed_dim": 210, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 16,
        "category_size": 256, "num_tokens": 128, "reducted_dim": 20, "convffn_kernel_size": 5,
        "mlp_ratio": 2.0},
        "ATD (ATD paper; official ATD_SRx4 options), 20.3M"),
    "drct": Preset("DRCT", {
        "embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 16,
        "mlp_ratio": 2.0, "gc": 32},
        "DRCT (DRCT paper; official DRCT_SRx4 options), 14.1M"),
    "drct-l": Preset("DRCT", {
        "embed_dim": 180, "depths": [6] * 12, "num_heads": [6] * 12, "window_size": 16,
        "mlp_ratio": 2.0, "gc": 32},
        "DRCT-L (DRCT paper; official DRCT-L_SRx4 options), 27.6M"),
    "span": Preset("SPAN", {"feature_channels": 48},
                   "SPAN (NTIRE 2024 efficient SR winner; official x4 options), 2.2M in its training "
                   "form (Conv3XC branches; the paper counts the re-parameterised network)"),
    "realplksr": Preset("RealPLKSR", {"dim": 64, "n_blocks": 28, "kernel_size": 17},
                        "RealPLKSR (neosr / traiNNer-redux defaults), 7.4M"),
    "plksr": Preset("PLKSR", {"dim": 64, "n_blocks": 28, "kernel_size": 17},
                    "PLKSR (PLKSR paper, the full model), 7.4M"),
    "plksr-tiny": Preset("PLKSR", {"dim": 64, "n_blocks": 12, "kernel_size": 13, "use_ea": False},
                         "PLKSR-tiny (PLKSR paper, the efficient model), 2.4M"),
    "omnisr": Preset("OmniSR", {"num_feat": 64, "block_num": 1, "res_num": 5, "window_size": 8},
                     "Omni-SR (paper; official OmniSR_X4 options), 0.8M"),
    "safmn": Preset("SAFMN", {"dim": 36, "n_blocks": 8, "ffn_scale": 2.0},
                    "SAFMN (paper; official SAFMN_DF2K_x4 options), 0.24M"),
    "safmn-l": Preset("SAFMN", {"dim": 128, "n_blocks": 16, "ffn_scale": 2.0},
                      "SAFMN-L (paper; official SAFMN_L_Real_x4 options), 5.6M"),
    "rcan": Preset("RCAN", {"n_resgroups": 10, "n_resblocks": 20, "n_feats": 64, "reduction": 16},
                   "RCAN (paper; official RCAN_BIX4 options), 15.6M"),
    "compact": Preset("Compact", {"num_feat": 64, "num_conv": 32},
                      "Real-ESRGAN realesr-general-x4v3 layout (SRVGGNetCompact), 1.2M"),
    "ultracompact": Preset("Compact", {"num_feat": 64, "num_conv": 8},
                           "SRVGGNetCompact with 8 convolutions (chaiNNer's UltraCompact), 0.3M"),
}


@lru_cache(maxsize=1)
def param_tables() -> dict[str, dict[str, dict]]:
    """family -> argument -> {"type": ..., "default": ...}, as written by ``write_param_tables``."""
    return json.loads(PARAMS_FILE.read_text())


def hyperparameters(arch: str, scale: int, preset: str | None = None,
                    params: dict | None = None) -> dict:
    """The constructor arguments of a family: SR defaults, then the preset, then ``params``."""
    family = FAMILIES[arch]
    base = PRESETS[preset].params if preset else {}
    return {**family.sr_defaults, **base, **(params or {}), family.scale_key: scale}


# --------------------------------------------------------------------------- with spandrel


def spandrel_class(arch: str):
    """The spandrel ``nn.Module`` class of a curated family."""
    import importlib

    module, cls = FAMILIES[arch].cls.split(":")
    return getattr(importlib.import_module(f"spandrel.architectures.{module}"), cls)


def build(arch: str, hparams: dict):
    """A curated family's module from its constructor arguments."""
    return spandrel_class(arch)(**hparams)


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


def family_of(model) -> str | None:
    """The curated family of a spandrel module, by its class (spandrel files RealPLKSR under
    PLKSR, for one)."""
    if not type(model).__module__.startswith("spandrel."):
        return None
    return next((name for name in FAMILIES if type(model) is spandrel_class(name)), None)


def detect(state_dict: dict, source: str) -> tuple[str, dict]:
    """Architecture id and hyperparameters of any SR state dict spandrel recognises."""
    desc = _spandrel_descriptor(state_dict, source)
    _check_purpose(desc, source)
    return family_of(desc.model) or desc.architecture.id, plain(desc.model.hyperparameters)


def is_spandrel_arch(arch: str) -> bool:
    """Whether spandrel (if installed) knows an architecture id."""
    try:
        from spandrel import MAIN_REGISTRY
    except ImportError:
        return False
    return arch in MAIN_REGISTRY


def load_any(state_dict: dict, source: str):
    """A module for a state dict of an architecture outside the curated list (inference only)."""
    from spandrel import ModelLoader

    _check_purpose(_spandrel_descriptor(state_dict, source), source)
    return ModelLoader().load_from_state_dict(state_dict).model.eval()


def describe(model) -> ModelDescriptor:
    """The descriptor of a spandrel module, from spandrel's own record of its size requirements
    and safe dtypes (kept on the module: its hyperparameters never change)."""
    key = json.dumps(plain(model.hyperparameters), sort_keys=True)
    cached = model.__dict__.get("_upres_descriptor")
    if cached is not None and cached[0] == key:
        return cached[1]
    descriptor = _describe(model)
    model.__dict__["_upres_descriptor"] = (key, descriptor)
    return descriptor


def _describe(model) -> ModelDescriptor:
    desc = _spandrel_descriptor(model.state_dict(), type(model).__name__)
    req = desc.size_requirements
    dtypes = ("fp32",) + (("bf16",) if desc.supports_bfloat16 else ()) + (
        ("fp16",) if desc.supports_half else ())
    hparams = plain(model.hyperparameters)
    family = FAMILIES.get(desc.architecture.id)
    width = hparams.get(family.width_key, 64) if family else 64
    multiple = req.multiple_of
    window = hparams.get("window_size")
    if isinstance(window, int) and window > 0:  # window attention: whole windows, no padding inside
        multiple = math.lcm(multiple, window)
    return ModelDescriptor(arch=family_of(model) or desc.architecture.id, scale=desc.scale,
                           in_channels=desc.input_channels, out_channels=desc.output_channels,
                           size_multiple=multiple, min_size=req.minimum, dtypes=dtypes,
                           activation_channels=int(width) if isinstance(width, int) else 64,
                           hparams=hparams)


def _json_type(annotation, default) -> str | None:
    """The table's type name of a constructor argument; None for arguments that are not plain
    data (layers, callables), which keep spandrel's default."""
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


def live_param_tables() -> dict[str, dict[str, dict]]:
    """The tables from the installed spandrel's constructor signatures."""
    import inspect

    tables = {}
    for name in FAMILIES:
        table = {}
        for arg in list(inspect.signature(spandrel_class(name).__init__).parameters.values())[1:]:
            default = None if arg.default is inspect.Parameter.empty else arg.default
            kind = _json_type(arg.annotation if arg.annotation is not inspect.Parameter.empty
                              else None, default)
            if kind is not None or arg.default is inspect.Parameter.empty:
                value = list(default) if isinstance(default, tuple) else default
                table[arg.name] = {"type": kind or "int", "default": value}
        tables[name] = table
    return tables


if __name__ == "__main__":  # regenerate zoo_params.json after a spandrel upgrade
    PARAMS_FILE.write_text(json.dumps(live_param_tables(), indent=1) + "\n")
    print(f"wrote {PARAMS_FILE}")
