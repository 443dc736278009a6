"""The load/save entry points: a pretrained name or a path in, a model (and its descriptor) out;
a model out to ``.safetensors``, BasicSR ``.pth`` or ``.onnx`` by the destination's extension."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from upres.errors import ArchitectureError, WeightsError
from upres.io.files import check_output_file
from upres.io.ncnn import read_ncnn
from upres.io.pretrained import PRETRAINED, load_pretrained
from upres.io.published import PUBLISHED, require
from upres.io.weights import (
    LoadedWeights,
    load_into,
    read_pth,
    read_safetensors,
    write_basicsr_pth,
    write_safetensors,
)
from upres.models import registry, zoo


def load_weights_file(path: str | Path) -> LoadedWeights:
    """Read a weights file by its extension: .pth/.pt/.ckpt, .safetensors, or ncnn .param/.bin."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors(path)
    if suffix in (".param", ".bin") and path.with_suffix(".param").exists():
        return read_ncnn(path.with_suffix(".param"), path.with_suffix(".bin"))
    if suffix in (".pth", ".pt", ".ckpt", ".bin"):
        return read_pth(path)
    raise WeightsError(f"{path}: unknown weights format {suffix!r} "
                       "(expected .pth, .pt, .safetensors, or an ncnn .param)")


def load_weights(spec: str | Path) -> LoadedWeights:
    """A pretrained name, a published name (installed by ``upres models pull``), or a path to any
    supported weights file."""
    if isinstance(spec, str) and spec in PRETRAINED:
        return load_pretrained(spec)
    if isinstance(spec, str) and spec in PUBLISHED:
        return load_weights_file(require(spec))
    return load_weights_file(spec)


def check_weights(weights: LoadedWeights) -> None:
    """Before anything is built: every tensor finite, and hyperparameters recorded in a file's
    metadata agree with what its tensors' shapes say (a forged ``num_block: 100000000`` over
    two blocks would otherwise build for ever)."""
    for key, tensor in weights.state_dict.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise WeightsError(f"{weights.source}: tensor {key} holds NaN or infinite values")
    if "hparams" not in weights.metadata:
        return
    largest = max([len(weights.state_dict)] + [max(t.shape, default=1) for t in weights.state_dict.values()])
    for key, value in weights.hparams.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, int) and not isinstance(v, bool) and v > max(4 * largest, 4096)
               for v in values):
            raise WeightsError(f"{weights.source}: metadata hyperparameter {key}={value!r} is out "
                               f"of proportion to the tensors ({len(weights.state_dict)} tensors, "
                               f"none larger than {largest})")
    entry = registry.ARCHITECTURES.get(weights.arch)
    if entry is None or entry.detect is None or not entry.detect(weights.state_dict):
        return  # spandrel cannot infer every hyperparameter; strict loading checks the tensors
    found = entry.infer_hparams(weights.state_dict, weights.source)
    diffs = [f"{k}: metadata {weights.hparams[k]!r}, tensors {found[k]!r}" for k in sorted(found)
             if k in weights.hparams and json.dumps(found[k]) != json.dumps(weights.hparams[k])]
    if diffs:
        raise WeightsError(f"{weights.source}: the metadata does not match the tensors ("
                           + "; ".join(diffs[:4]) + ")")


def model_from_weights(weights: LoadedWeights) -> nn.Module:
    """Build the recorded (or inferred) architecture and load the weights strictly; an SR
    architecture outside the registry is built by spandrel from the state dict. The weights are
    checked first (``check_weights``)."""
    check_weights(weights)
    if weights.arch not in registry.ARCHITECTURES:
        if not zoo.is_spandrel_arch(weights.arch):
            raise WeightsError(f"{weights.source}: unknown architecture '{weights.arch}' (upres: "
                               f"{', '.join(registry.ARCHITECTURES)}; or any SR architecture of "
                               "spandrel)")
        return zoo.load_any(weights.state_dict, weights.source)
    try:
        try:
            with torch.device("meta"):  # no random initialisation: every tensor is loaded next
                model = registry.build_model(weights.arch, weights.hparams)
        except ArchitectureError:  # some networks compute at build time: build for real
            model = registry.build_model(weights.arch, weights.hparams)
    except (ArchitectureError, TypeError, ValueError) as err:  # bad metadata: name the file
        raise WeightsError(f"{weights.source}: cannot build {weights.arch} from its "
                           f"hyperparameters: {err}") from None
    load_into(model, weights.state_dict, weights.source, assign=True)
    if any(t.is_meta for t in model.buffers()):  # buffers kept out of the state dict: real build
        model = registry.build_model(weights.arch, weights.hparams)
        load_into(model, weights.state_dict, weights.source)
    return model.eval()


def load_model(spec: str | Path) -> nn.Module:
    """A ready ``eval()`` model from a pretrained name or a weights file."""
    return model_from_weights(load_weights(spec))


def save_model(model: nn.Module, path: str | Path, extra: dict | None = None,
               overwrite: bool = True) -> None:
    """Save by the destination's extension: ``.safetensors``, a BasicSR-style ``.pth``, or
    ``.onnx``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        desc = registry.describe(model)
        write_safetensors(model.state_dict(), path, desc.arch, desc.hparams,
                          {"scale": desc.scale, **(extra or {})}, overwrite)
    elif suffix in (".pth", ".pt"):
        write_basicsr_pth(model.state_dict(), path, overwrite)
    elif suffix == ".onnx":
        from upres.io.onnx import export_onnx

        desc = registry.describe(model)
        why = registry.backend_refusal(desc.arch, "onnx")
        if why:
            raise WeightsError(f"{path}: {desc.arch} does not export to ONNX: {why}; use "
                               ".safetensors or .pth")
        export_onnx(model, desc, path, overwrite=overwrite)
    else:
        raise WeightsError(f"{path}: cannot save to {path.suffix!r}; use .safetensors, .pth or .onnx")


def convert(src: str | Path, dst: str | Path, overwrite: bool = False) -> LoadedWeights:
    """Convert between formats; the destination's extension chooses the output format, and a
    safetensors output keeps what the source's metadata recorded (``step``, ``val_psnr``, ...)
    beside ``source``. An existing ``dst`` is replaced only with ``overwrite``, and never the
    source."""
    check_output_file(dst, overwrite, inputs=(src,) if Path(str(src)).exists() else ())
    if Path(dst).suffix.lower() not in (".safetensors", ".pth", ".pt", ".onnx"):
        raise WeightsError(f"{dst}: cannot save to {Path(dst).suffix!r}; use .safetensors, .pth "
                           "or .onnx")
    weights = load_weights(src)
    kept = {k: v for k, v in weights.metadata.items() if k not in ("format", "arch", "hparams", "scale")}
    save_model(model_from_weights(weights), dst, extra={**kept, "source": str(src)}, overwrite=overwrite)
    return weights
