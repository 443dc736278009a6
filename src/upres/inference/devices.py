"""Device and compute-dtype choice by name, without importing PyTorch where the answer is plain:
a machine with no GPU device node runs on the CPU, and inference on a cached OpenVINO model then
never pays PyTorch's start-up (about a second and 140 MB here)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from upres.errors import InferenceError
from upres.models.descriptor import DTYPE_NAMES


def gpu_present() -> bool:
    """Whether this machine may have a GPU PyTorch can use: NVIDIA or ROCm device nodes, WSL's
    GPU bridge, or a Mac (MPS). Where none exists, ``torch.cuda.is_available()`` is False too."""
    dev = Path("/dev")
    return (sys.platform == "darwin" or any(dev.glob("nvidia[0-9]*")) or (dev / "kfd").exists()
            or (dev / "dxg").exists())


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16), where bf16 inference
    is faster than fp32 in both backends; elsewhere bf16 is emulated and slower."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str = "auto") -> str:
    """The device's name: ``auto`` picks CUDA, then Apple MPS, then the CPU; a named device must
    exist. PyTorch is imported only where a GPU may exist or one is named."""
    if device == "cpu" or (device == "auto" and not gpu_present()):
        return "cpu"
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InferenceError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"device {device!r} requested but CUDA is not available")
    return str(dev)


def pick_dtype(dtype: str, device: str, supported: tuple[str, ...],
               fast_bf16: Callable[[], bool] | None = None) -> str:
    """``auto``: fp16 on CUDA (bf16 for models not safe in fp16), bf16 on CPUs with native bf16
    (``fast_bf16``), else fp32, each only where the model supports it. fp16 is CUDA-only."""
    kind = device.split(":")[0]
    if dtype == "auto":
        if kind == "cuda":  # fp16 where the model is safe in it, else bf16 (window transformers)
            return next((d for d in ("fp16", "bf16") if d in supported), "fp32")
        if kind == "cpu" and "bf16" in supported and (fast_bf16 or cpu_has_fast_bf16)():
            return "bf16"
        return "fp32"
    if dtype not in DTYPE_NAMES:
        raise InferenceError(f"unknown dtype {dtype!r}; choose auto, fp32, bf16 or fp16")
    if dtype == "fp16" and kind != "cuda":
        raise InferenceError(f"dtype fp16 is supported on CUDA only, not on {kind}; "
                             "use bf16 or fp32")
    if dtype not in supported:
        raise InferenceError(f"dtype {dtype} is not supported by this model (supported: "
                             f"{', '.join(supported)})")
    return dtype


def dtype_reason(dtype: str, chosen: str, device: str, supported: tuple[str, ...]) -> str:
    """Why ``auto`` (or the user) gave ``chosen``, in a few words."""
    if dtype != "auto":
        return f"{chosen} as asked"
    kind = device.split(":")[0]
    if kind == "cuda":
        return chosen if chosen == "fp16" else f"{chosen}: fp16 is not safe for this model"
    if kind == "cpu" and chosen == "fp32":
        return ("fp32: bf16 is not safe for this model" if "bf16" not in supported
                else "fp32: this CPU has no native bf16")
    return f"{chosen}: native on this CPU" if kind == "cpu" else chosen
