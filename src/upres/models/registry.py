"""The one registry of architecture families: upres's RRDBNet and the curated spandrel families
are uniform ``Architecture`` entries (network, constructor table, presets, what converts), so a
new family is one entry here (or ``register(entry)`` from user code) and nothing else changes:
configs, training, inference and export read only the entry and the ``ModelDescriptor``.

Torch-free at import: configs validate against the entries and their constructor tables
(``params.json``) without PyTorch; networks are imported on first build."""

from __future__ import annotations

import importlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from upres.errors import ArchitectureError
from upres.models import zoo
from upres.models.descriptor import ModelDescriptor

if TYPE_CHECKING:
    from torch import nn

PARAMS_FILE = Path(__file__).with_name("params.json")


@dataclass(frozen=True)
class Preset:
    """A published size of a family: constructor arguments and where they come from."""

    params: dict
    source: str




@dataclass(frozen=True)
class Architecture:
    """One family. ``network`` imports and returns its ``nn.Module`` class; ``describe`` and
    ``detect`` default to spandrel's record of the network (sizes, safe dtypes, state-dict
    detection); ``infer_hparams`` reads hyperparameters from a state dict where ``detect``
    recognises it."""

    name: str
    network: Callable[[], type]
    scale_key: str  # the constructor argument holding the scale
    width_key: str  # the feature width (activation memory grows with it)
    defaults: dict = field(default_factory=dict)  # beyond the constructor's defaults, for SR
    presets: dict[str, Preset] = field(default_factory=dict)
    scales: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    paper: str = ""
    # Measured with tiny models against PyTorch fp32 (torch 2.14.1, OpenVINO 2026.4.1): why
    # OpenVINO conversion or ONNX export is not offered ("" = works). A crash cannot be caught,
    # so upres does not try.
    no_openvino: str = ""
    no_onnx: str = ""
    install_hint: str = ""  # what to install when ``network`` cannot be imported
    describe: Callable[[nn.Module], ModelDescriptor] = zoo.describe
    detect: Callable[[dict], bool] | None = None  # None: spandrel's detection decides
    infer_hparams: Callable[[dict, str], dict] | None = None


def spandrel_family(name: str, cls: str, scale_key: str, width_key: str, defaults: dict,
                    paper: str, presets: dict[str, Preset], **refusals: str) -> Architecture:
    """An entry for a network class defined by spandrel (``"Module:Class"`` under
    ``spandrel.architectures``)."""
    return Architecture(name, lambda: zoo.spandrel_class(cls), scale_key, width_key, defaults,
                        presets, paper=paper, install_hint=zoo.ZOO_HINT,
                        describe=lambda model: zoo.describe(model, name, width_key), **refusals)


def own_family(name: str, module: str, scale_key: str, width_key: str, scales: tuple[int, ...],
               paper: str, presets: dict[str, Preset], **refusals: str) -> Architecture:
    """An entry for a network written in upres (``upres.models.MODULE``, which also holds its
    ``describe``, ``detect`` and ``infer_hparams``), imported when first used."""
    def mod():
        return importlib.import_module(f"upres.models.{module}")

    return Architecture(name, lambda: getattr(mod(), name), scale_key, width_key, scales=scales,
                        paper=paper, presets=presets, describe=lambda model: mod().describe(model),
                        detect=lambda sd: mod().detect(sd),
                        infer_hparams=lambda sd, source: mod().infer_hparams(sd, source), **refusals)


_FIXED_SIZE_ONNX = ("the exported graph only takes the export's input size (its pooling sizes are "
                    "fractions of the input size, traced as constants)")
_ENTRIES = [
    own_family("RRDBNet", "rrdbnet", "scale", "num_feat", (1, 2, 4),
               "Wang et al., ESRGAN, ECCVW 2018; Real-ESRGAN, ICCVW 2021 (BasicSR's names)", {
        "rrdbnet-x4plus": Preset(
            {"num_feat": 64, "num_block": 23, "num_grow_ch": 32},
            "Real-ESRGAN x4plus's layout (64/32/23), what realesrgan-x4plus loads into, 16.7M")}),
    own_family("IMDN", "imdn", "upscale", "nf", (2, 3, 4),
               "Hui et al., IMDN, ACM MM 2019 (AIM 2019 constrained SR winner)", {
        "imdn": Preset({"nf": 64, "num_modules": 6},
                       "IMDN (paper; the authors' x4 model, imdn-x4), 0.72M")}),
    own_family("RFDN", "rfdn", "upscale", "nf", (2, 3, 4),
               "Liu et al., RFDN, ECCVW 2020 (AIM 2020 efficient SR winner; NTIRE 2022 baseline)", {
        "rfdn-ntire": Preset({"nf": 50, "num_modules": 4},
                             "RFDN as in the NTIRE 2022 baseline (rfdn-x4), 0.43M")}),
    own_family("RLFN", "rlfn", "upscale", "nf", (2, 3, 4),
               "Kong et al., RLFN, CVPRW 2022 (NTIRE 2022 efficient SR winner)", {
        "rlfn-ntire": Preset({"nf": 46, "mf": 48, "num_blocks": 4, "esa_channels": 16},
                             "RLFN as entered in NTIRE 2022 (rlfn-x4), 0.32M")}),
    own_family("BSRN", "bsrn", "upscale", "num_feat", (2, 3, 4),
               "Li et al., BSRN, CVPRW 2022 (NTIRE 2022 efficient SR, model complexity winner)", {
        "bsrn-s": Preset({"num_feat": 48, "num_block": 5},
                         "BSRN-S, the NTIRE 2022 entry (bsrn-x4), 0.16M")}),
    own_family("SAFMNPP", "safmnpp", "upscaling_factor", "dim", (2, 3, 4),
               "Sun et al., SAFMN++ (NTIRE 2024 efficient SR entry)", {
        "safmnpp": Preset({"dim": 36, "n_blocks": 6, "ffn_scale": 1.5},
                          "SAFMN++ as entered in NTIRE 2024 (safmnpp-x4), 0.21M")},
               no_onnx=_FIXED_SIZE_ONNX),
    own_family("SAFMN23", "safmn23", "upscaling_factor", "dim", (2, 3, 4),
               "Sun et al., SAFMN, ICCV 2023; the NTIRE 2023 efficient SR entry's variant", {
        "safmn23": Preset({"dim": 36, "n_blocks": 8, "ffn_scale": 2.0},
                          "SAFMN as entered in NTIRE 2023 (safmn-ntire23-x4), 0.24M")},
               no_onnx=_FIXED_SIZE_ONNX),
    own_family("SPANFused", "spanfused", "upscale", "feature_channels", (2, 3, 4),
               "Wan et al., SPAN, CVPRW 2024 (NTIRE 2024 efficient SR winner), re-parameterised", {
        "span-ch28": Preset({"feature_channels": 28},
                            "re-parameterised SPAN, 28 channels (span-ch28-x4), 0.15M")}),
    spandrel_family("SwinIR", "SwinIR:SwinIR", "upscale", "embed_dim", {
        "upsampler": "pixelshuffle", "img_range": 1.0, "window_size": 8, "mlp_ratio": 2.0},
        "Liang et al., SwinIR, ICCVW 2021", {
        "swinir-light": Preset({
            "embed_dim": 60, "depths": [6, 6, 6, 6], "num_heads": [6, 6, 6, 6], "window_size": 8,
            "mlp_ratio": 2.0, "img_size": 64, "upsampler": "pixelshuffledirect"},
            "SwinIR lightweight SR (paper Table 3; official 002_lightweightSR options), 0.9M "
            "parameters"),
        "swinir-m": Preset({
            "embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 8,
            "mlp_ratio": 2.0, "img_size": 48, "upsampler": "pixelshuffle"},
            "SwinIR classical SR, the paper's SwinIR (official 001_classicalSR options), 11.9M")}),
    spandrel_family("HAT", "HAT:HAT", "upscale", "embed_dim", {
        "img_range": 1.0, "window_size": 16, "mlp_ratio": 2.0},
        "Chen et al., HAT, CVPR 2023", {
        "hat-s": Preset({
            "embed_dim": 144, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 16,
            "compress_ratio": 24, "squeeze_factor": 24, "mlp_ratio": 2.0, "img_size": 64},
            "HAT-S (HAT paper, Table 1; official HAT-S_SRx4 options), 9.6M"),
        "hat-m": Preset({
            "embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 16,
            "compress_ratio": 3, "squeeze_factor": 30, "mlp_ratio": 2.0, "img_size": 64},
            "HAT (the paper's base model; official HAT_SRx4 options), 20.8M"),
        "hat-l": Preset({
            "embed_dim": 180, "depths": [6] * 12, "num_heads": [6] * 12, "window_size": 16,
            "compress_ratio": 3, "squeeze_factor": 30, "mlp_ratio": 2.0, "img_size": 64},
            "HAT-L (HAT paper; official HAT-L_SRx4 options), 40.8M")}),
    spandrel_family("DAT", "DAT:DAT", "upscale", "embed_dim", {"img_range": 1.0},
                    "Chen et al., Dual Aggregation Transformer, ICCV 2023", {
        "dat-light": Preset({
            "embed_dim": 60, "depth": [18], "num_heads": [6], "split_size": [8, 32],
            "expansion_factor": 2.0, "resi_connection": "3conv", "upsampler": "pixelshuffledirect"},
            "DAT-light (DAT paper, lightweight SR; official DAT_light_x4 options), 0.6M"),
        "dat-s": Preset({
            "embed_dim": 180, "depth": [6] * 6, "num_heads": [6] * 6, "split_size": [8, 16],
            "expansion_factor": 2.0},
            "DAT-S (DAT paper, Table 6; official DAT_S_x4 options), 11.2M"),
        "dat": Preset({
            "embed_dim": 180, "depth": [6] * 6, "num_heads": [6] * 6, "split_size": [8, 32],
            "expansion_factor": 4.0},
            "DAT (DAT paper; official DAT_x4 options), 14.8M")},
        no_openvino="OpenVINO's converter crashes on it (segmentation fault)",
        no_onnx="the exported graph fails in onnxruntime (a LayerNormalization of size 0)"),
    spandrel_family("ATD", "ATD:ATD", "upscale", "embed_dim", {
        "img_range": 1.0, "upsampler": "pixelshuffle", "window_size": 16},
        "Zhang et al., Adaptive Token Dictionary, CVPR 2024", {
        "atd-light": Preset({
            "embed_dim": 48, "depths": [6, 6, 6, 6], "num_heads": [4, 4, 4, 4], "window_size": 16,
            "category_size": 128, "num_tokens": 64, "reducted_dim": 8, "convffn_kernel_size": 7,
            "mlp_ratio": 1.0, "upsampler": "pixelshuffledirect"},
            "ATD-light (ATD paper; official ATD_light_SRx4 options), 0.8M"),
        "atd": Preset({
            "embed_dim": 210, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 16,
            "category_size": 256, "num_tokens": 128, "reducted_dim": 20, "convffn_kernel_size": 5,
            "mlp_ratio": 2.0},
            "ATD (ATD paper; official ATD_SRx4 options), 20.3M")},
        no_onnx="torch.onnx cannot convert its exported program"),
    spandrel_family("DRCT", "DRCT:DRCT", "upscale", "embed_dim", {
        "img_range": 1.0, "upsampler": "pixelshuffle"}, "Hsu et al., DRCT, CVPRW 2024", {
        "drct": Preset({
            "embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 16,
            "mlp_ratio": 2.0, "gc": 32},
            "DRCT (DRCT paper; official DRCT_SRx4 options), 14.1M"),
        "drct-l": Preset({
            "embed_dim": 180, "depths": [6] * 12, "num_heads": [6] * 12, "window_size": 16,
            "mlp_ratio": 2.0, "gc": 32},
            "DRCT-L (DRCT paper; official DRCT-L_SRx4 options), 27.6M")},
        no_onnx="the exported graph runs but differs from PyTorch by up to 0.13"),
    spandrel_family("SPAN", "SPAN:SPAN", "upscale", "feature_channels",
                    {"num_in_ch": 3, "num_out_ch": 3},
                    "Wan et al., SPAN, CVPRW 2024 (NTIRE 2024 efficient SR)", {
        "span": Preset({"feature_channels": 48},
                       "SPAN (NTIRE 2024 efficient SR winner; official x4 options), 2.2M in its "
                       "training form (Conv3XC branches; the paper counts the re-parameterised "
                       "network)")},
        no_onnx="torch.export crashes on it (segmentation fault)"),
    spandrel_family("RealPLKSR", "PLKSR:RealPLKSR", "upscaling_factor", "dim", {},
                    "Lee et al., PLKSR, 2024; RealPLKSR variant from neosr / traiNNer-redux", {
        "realplksr": Preset({"dim": 64, "n_blocks": 28, "kernel_size": 17},
                            "RealPLKSR (neosr / traiNNer-redux defaults), 7.4M")}),
    spandrel_family("PLKSR", "PLKSR:PLKSR", "upscaling_factor", "dim", {},
                    "Lee et al., Partial Large Kernel CNNs for efficient SR, 2024", {
        "plksr": Preset({"dim": 64, "n_blocks": 28, "kernel_size": 17},
                        "PLKSR (PLKSR paper, the full model), 7.4M"),
        "plksr-tiny": Preset({"dim": 64, "n_blocks": 12, "kernel_size": 13, "use_ea": False},
                             "PLKSR-tiny (PLKSR paper, the efficient model), 2.4M")}),
    spandrel_family("OmniSR", "OmniSR:OmniSR", "up_scale", "num_feat", {},
                    "Wang et al., Omni Aggregation Networks, CVPR 2023", {
        "omnisr": Preset({"num_feat": 64, "block_num": 1, "res_num": 5, "window_size": 8},
                         "Omni-SR (paper; official OmniSR_X4 options), 0.8M")}),
    spandrel_family("SAFMN", "SAFMN:SAFMN", "upscaling_factor", "dim", {"dim": 36},
                    "Sun et al., SAFMN, ICCV 2023", {
        "safmn": Preset({"dim": 36, "n_blocks": 8, "ffn_scale": 2.0},
                        "SAFMN (paper; official SAFMN_DF2K_x4 options), 0.24M"),
        "safmn-l": Preset({"dim": 128, "n_blocks": 16, "ffn_scale": 2.0},
                          "SAFMN-L (paper; official SAFMN_L_Real_x4 options), 5.6M")}),
    spandrel_family("CRAFT", "CRAFT:CRAFT", "upscale", "embed_dim", {},
                    "Li et al., CRAFT (feature modulation transformer), ICCV 2023", {
        "craft": Preset({"embed_dim": 48, "depths": [2, 2, 2, 2], "num_heads": [6, 6, 6, 6],
                         "window_size": 16, "split_size_0": 4, "split_size_1": 16, "mlp_ratio": 2.0},
                        "CRAFT (paper; the layout of the published x4 model, craft-x4), 0.75M")},
                    no_openvino="the converter crashes (segmentation fault)",
                    no_onnx="the exported graph fails in onnxruntime (a LayerNormalization over an "
                            "empty axis)"),
    spandrel_family("RCAN", "RCAN:RCAN", "scale", "n_feats", {}, "Zhang et al., RCAN, ECCV 2018", {
        "rcan": Preset({"n_resgroups": 10, "n_resblocks": 20, "n_feats": 64, "reduction": 16},
                       "RCAN (paper; official RCAN_BIX4 options), 15.6M")}),
    spandrel_family("Compact", "Compact:Compact", "upscale", "num_feat", {},
                    "Wang et al., Real-ESRGAN's SRVGGNetCompact, ICCVW 2021", {
        "compact": Preset({"num_feat": 64, "num_conv": 32},
                          "Real-ESRGAN realesr-general-x4v3 layout (SRVGGNetCompact), 1.2M"),
        "ultracompact": Preset({"num_feat": 64, "num_conv": 8},
                               "SRVGGNetCompact with 8 convolutions (chaiNNer's UltraCompact), 0.3M")}),
]
ARCHITECTURES: dict[str, Architecture] = {entry.name: entry for entry in _ENTRIES}


def register(entry: Architecture) -> Architecture:
    """Add a family (e.g. another spandrel architecture) for this process; its presets must
    not clash with existing names."""
    if entry.name in ARCHITECTURES:
        raise ArchitectureError(f"architecture {entry.name!r} is registered already")
    clash = sorted(set(entry.presets) & set(presets()))
    if clash:
        raise ArchitectureError(f"{entry.name}: preset names already taken: {', '.join(clash)}")
    ARCHITECTURES[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    ARCHITECTURES.pop(name, None)


def get(arch: str) -> Architecture:
    if arch not in ARCHITECTURES:
        raise ArchitectureError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def presets() -> dict[str, tuple[str, Preset]]:
    """Every preset by name, with its family."""
    return {name: (entry.name, preset) for entry in ARCHITECTURES.values()
            for name, preset in entry.presets.items()}


def hyperparameters(arch: str, scale: int, preset: str | None = None,
                    params: dict | None = None) -> dict:
    """A family's constructor arguments: its SR defaults, then the preset, then ``params``."""
    entry = get(arch)
    base = entry.presets[preset].params if preset else {}
    return {**entry.defaults, **base, **(params or {}), entry.scale_key: scale}


def backend_refusal(arch: str, backend: str) -> str | None:
    """Why a registered family is not converted to ``openvino`` or ``onnx``, else None."""
    entry = ARCHITECTURES.get(arch)
    if entry is None:
        return None
    return (entry.no_openvino if backend == "openvino" else entry.no_onnx) or None


# --------------------------------------------------------------------------- constructor tables


@lru_cache(maxsize=1)
def _stored_tables() -> dict[str, dict[str, dict]]:
    return json.loads(PARAMS_FILE.read_text())


def param_table(arch: str) -> dict[str, dict]:
    """argument -> {"type", "default"} of a family's constructor: from ``params.json`` (written
    by ``python -m upres.models.registry``, checked against the code by the tests) without
    PyTorch; a family registered later is read from its signature."""
    stored = _stored_tables().get(arch)
    return stored if stored is not None else live_param_table(arch)


def live_param_table(arch: str) -> dict[str, dict]:
    """The table from the network class's constructor signature."""
    try:
        cls = get(arch).network()
    except ImportError:
        raise ArchitectureError(f"{arch}: {get(arch).install_hint or 'cannot import it'}") from None
    return zoo.signature_table(cls)


# --------------------------------------------------------------------------- with PyTorch


def build_model(arch: str, hparams: dict) -> nn.Module:
    """A registered family's network from its constructor arguments."""
    entry = get(arch)
    try:
        cls = entry.network()
    except ImportError:
        raise ArchitectureError(f"{arch} needs a package that is not installed: "
                                f"{entry.install_hint}") from None
    try:
        with warnings.catch_warnings():  # window transformers' torch.meshgrid without indexing=
            warnings.filterwarnings("ignore", message=r"torch\.meshgrid", category=UserWarning)
            return cls(**hparams)
    except ArchitectureError:
        raise
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as err:
        raise ArchitectureError(f"{arch}: bad hyperparameters {hparams} ({err})") from None


def family_of(model: nn.Module) -> Architecture | None:
    """The registered family of a module, by its class (spandrel files RealPLKSR under PLKSR,
    so the class decides, not spandrel's id)."""
    for entry in ARCHITECTURES.values():
        try:
            if type(model) is entry.network():
                return entry
        except ImportError:  # a family whose package is missing cannot have built this module
            continue
    return None


def describe(model: nn.Module) -> ModelDescriptor:
    """The descriptor of a registered family's module, or of any spandrel SR module."""
    entry = family_of(model)
    if entry is not None:
        return entry.describe(model)
    if zoo.is_spandrel_module(model):
        return zoo.describe(model)
    raise ArchitectureError(f"{type(model).__name__} is not a registered architecture "
                            f"({', '.join(ARCHITECTURES)} or a spandrel module); pass a "
                            "ModelDescriptor with it")


def detect_architecture(state_dict: dict, source: str) -> tuple[str, dict]:
    """Architecture name and hyperparameters of a state dict, from its keys and shapes: the
    entries with their own detector first, then every SR architecture spandrel recognises."""
    for entry in ARCHITECTURES.values():
        if entry.detect is not None and entry.detect(state_dict):
            return entry.name, entry.infer_hparams(state_dict, source)
    module, arch_id, hparams = zoo.detect(state_dict, source)
    entry = family_of(module)
    return (entry.name if entry else arch_id), hparams


if __name__ == "__main__":  # regenerate params.json after a spandrel upgrade or a new entry
    tables = {name: live_param_table(name) for name in ARCHITECTURES}
    PARAMS_FILE.write_text(json.dumps(tables, indent=1) + "\n")
    print(f"wrote {PARAMS_FILE}")
