"""Weights formats: BasicSR / Real-ESRGAN ``.pth`` (``params_ema``, ``params``, bare) and our
safetensors with metadata; strict and partial loading into a model.

Nothing here ever unpickles arbitrary objects: ``.pth`` files go through
``torch.load(weights_only=True)``."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from upres.errors import WeightsError
from upres.io.files import atomic_path
from upres.models.registry import ARCHITECTURES, describe, detect_architecture
from upres.models.rrdbnet import basicsr_names

FORMAT_TAG = "upres"


@dataclass
class LoadedWeights:
    """A state dict with what is known of its architecture."""

    state_dict: dict[str, torch.Tensor]
    arch: str
    hparams: dict
    source: str
    metadata: dict = field(default_factory=dict)


def unwrap_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    """Pick ``params_ema``, then ``params``, ``state_dict`` or ``model`` (the layouts of BasicSR,
    HAT, DAT, ...), then a bare state dict; strip ``module.`` prefixes."""
    if isinstance(obj, dict):
        for key in ("params_ema", "params", "state_dict", "model"):
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


def pickled_global(err: Exception) -> str:
    """The object a refused pickle names (PyTorch's message goes on to advise
    ``weights_only=False``, which upres never does), as ``" (it names X)"``, or ``""``."""
    match = re.search(r"(?:Unsupported global: GLOBAL|global) ([\w.]+)", str(err))
    return f" (it names {match.group(1)})" if match else ""


def torch_load_problem(err: Exception) -> str:
    """What ``torch.load`` failed on, in a user's terms (not PyTorch's zip-reader internals)."""
    text = str(err)
    if "central directory" in text or "zip archive" in text or isinstance(err, EOFError):
        return "not a PyTorch file, or cut short"
    return (text.splitlines() or [type(err).__name__])[0][:160]


def read_pth(path: Path) -> LoadedWeights:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"{path}: refused to load: the file holds pickled objects other than tensors, which "
            f"could run code{pickled_global(err)}. Convert it where you trust it, or use a "
            ".safetensors file") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise WeightsError(f"{path}: not a readable PyTorch weights file "
                           f"({torch_load_problem(err)})") from None
    sd = basicsr_names(unwrap_state_dict(obj, str(path)))
    arch, hparams = detect_architecture(sd, str(path))
    return LoadedWeights(sd, arch, hparams, str(path))


def read_safetensors(path: Path) -> LoadedWeights:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types
        raise WeightsError(f"{path}: not a readable safetensors file ({err})") from None
    if "hparams" in metadata:
        try:
            hparams = json.loads(metadata["hparams"])
        except json.JSONDecodeError as err:
            raise WeightsError(f"{path}: metadata key 'hparams' is not valid JSON ({err})") from None
        if not isinstance(hparams, dict):
            raise WeightsError(f"{path}: metadata key 'hparams' must be a JSON object, "
                               f"got {metadata['hparams']!r}")
        arch = metadata.get("arch", "RRDBNet")
    else:
        arch, hparams = detect_architecture(sd, str(path))
    return LoadedWeights(sd, arch, hparams, str(path), metadata)


def write_safetensors(state_dict: dict[str, torch.Tensor], path: str | Path, arch: str,
                      hparams: dict, extra: dict | None = None, overwrite: bool = True) -> None:
    """Our format: safetensors whose metadata records architecture, hyperparameters and scale."""
    metadata = {"format": FORMAT_TAG, "arch": arch, "hparams": json.dumps(hparams),
                "scale": str(hparams.get("scale", "")),
                **{k: str(v) for k, v in (extra or {}).items()}}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(path, overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def write_basicsr_pth(state_dict: dict[str, torch.Tensor], path: str | Path,
                      overwrite: bool = True) -> None:
    """A BasicSR-style ``{"params_ema": ...}`` file that Real-ESRGAN and spandrel load as is."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(path, overwrite) as tmp:
        torch.save({"params_ema": tensors}, tmp)


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str,
              assign: bool = False) -> None:
    """Strict load whose error names every missing, unexpected and mis-shaped key (``assign``:
    the tensors become the parameters, as a model built on the meta device needs)."""
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
    if assign:  # parameters must be float32 and contiguous, whatever the file stored
        state_dict = {k: v.float().contiguous() if v.is_floating_point() else v
                      for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=assign)


def load_matching(model: nn.Module, weights: LoadedWeights, strict: bool = True) -> dict:
    """Initialise ``model`` from ``weights``. Strict: everything must fit, and a different
    architecture or width is explained. Non-strict: tensors whose names and shapes match are
    loaded and the rest keep their initialisation. Returns which tensors were loaded."""
    expected = model.state_dict()
    if strict:
        mine = describe(model).hparams
        diffs = [f"{k}: weights {weights.hparams[k]} vs model {mine[k]}"
                 for k in sorted(set(mine) & set(weights.hparams))
                 if json.dumps(weights.hparams[k]) != json.dumps(mine[k])]  # (1, 2) == [1, 2]
        try:  # every tensor must fit; differing hyperparameters explain why not
            load_into(model, weights.state_dict, weights.source)
        except WeightsError:
            if not diffs:
                raise
            scales = weights_scale(weights), describe(model).scale
            hint = (f" x{scales[0]} weights do not fit an x{scales[1]} model: the scale changes "
                    "the shapes of the input or upsampling layers." if scales[0] != scales[1] else "")
            raise WeightsError(f"{weights.source}: hyperparameters differ from the model's: "
                               f"{'; '.join(diffs)}.{hint} Match the model to the weights, or set "
                               "init.strict: false to load only the tensors whose shapes match") from None
        return {"loaded": sorted(expected), "skipped": []}
    loaded = {k: v for k, v in weights.state_dict.items()
              if k in expected and v.shape == expected[k].shape}
    model.load_state_dict(loaded, strict=False)
    return {"loaded": sorted(loaded), "skipped": sorted(set(expected) - set(loaded))}


def weights_scale(weights: LoadedWeights) -> int | None:
    """The scale a weights file records (metadata) or its hyperparameters imply."""
    entry = ARCHITECTURES.get(weights.arch)
    value = weights.metadata.get("scale") or weights.hparams.get(entry.scale_key if entry else "scale")
    return int(value) if str(value).isdigit() else None


def tensors_sha256(state_dict: dict) -> str:
    """A hash of the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
