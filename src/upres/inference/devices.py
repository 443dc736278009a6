"""Device and compute-dtype choice by name, without importing PyTorch where the answer is plain:
a machine with no GPU device node runs on the CPU, and inference on a cached OpenVINO model then
never pays PyTorch's start-up (about a second and 140 MB here)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from upres.errors import InferenceError

DTYPE_NAMES = ("fp32", "bf16", "fp16")


def gpu_present() -> bool:
    """Whether this machine may have a GPU PyTorch can use: NVIDIA or ROCm device nodes, WSL's
    GPU bridge, or a Mac (MPS). Where none exists, ``torch.cuda.is_available()`` is False too."""
    dev = Path("/dev")
    return (sys.platform == "darwin" or any(dev.glob("nvidia[0-9]*")) or (dev / "kfd").exists()
            or (dev / "dxg").exists())


def pick_device(device: str = "auto") -> str:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; the name of the device chosen."""
    if device == "cpu" or (device == "auto" and not gpu_present()):
        return "cpu"
    from upres.inference.torch_backend import resolve_device

    return str(resolve_device(device))


def pick_dtype(dtype: str, device: str, supported: tuple[str, ...],
               fast_bf16: Callable[[], bool]) -> str:
    """``auto``: fp16 on CUDA (bf16 for models not safe in fp16), bf16 on CPUs with native bf16
    (``fast_bf16``), else fp32, each only where the model supports it. fp16 is CUDA-only."""
    kind = device.split(":")[0]
    if dtype == "auto":
        if kind == "cuda":  # fp16 where the model is safe in it, else bf16 (window transformers)
            return next((d for d in ("fp16", "bf16") if d in supported), "fp32")
        if kind == "cpu" and "bf16" in supported and fast_bf16():
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
