"""PyTorch as an inference backend: the model on its device, in its compute dtype (autocast,
weights stay fp32) and memory layout, called on host arrays like every other backend. Also the
autocast and dtype helpers training shares."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from upres.inference.devices import pick_dtype
from upres.models.descriptor import DTYPE_NAMES, ModelDescriptor

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.bfloat16, torch.float16)))


def resolve_dtype(dtype: str, device: str | torch.device,
                  supported: tuple[str, ...] = DTYPE_NAMES) -> torch.dtype:
    """The torch dtype for a name (see ``devices.pick_dtype``)."""
    return DTYPES[pick_dtype(dtype, str(device), supported)]


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision by autocast (weights stay fp32); fp32 runs plainly."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """Tune cuDNN kernels for the call's shape, then restore the caller's setting."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or old
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


class TorchModel:
    """(N, C, H, W) float32 host array -> (N, C_out, sH, sW) float32 host array through a PyTorch
    module on ``device`` in ``dtype`` (a name: fp32, bf16, fp16; by autocast), optionally
    channels_last and torch.compiled."""

    def __init__(self, model: nn.Module, device: torch.device, dtype: str,
                 channels_last: bool = True, compile: bool = False) -> None:
        # Set the weights' layout both ways: a model shared with an earlier Upscaler may have
        # been converted already.
        self.module = model.eval().to(device, memory_format=torch.channels_last if channels_last
                                      else torch.contiguous_format)
        self.forward = torch.compile(self.module) if compile else self.module
        self.device, self.dtype, self.channels_last = device, DTYPES[dtype], channels_last

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        # a copy: some networks (spandrel's RCAN) scale their input in place
        batch = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, copy=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with cudnn_benchmark(self.device.type == "cuda"), autocast_context(self.device, self.dtype):
            out = self.forward(batch).float()
        return out.cpu().contiguous().numpy()


def measure_cuda(forward: TorchModel, descriptor: ModelDescriptor,
                 sizes: tuple[int, int] = (64, 128)) -> float:
    """Bytes per input pixel on CUDA, from the allocator's peak at two input sizes."""
    device = forward.device
    peaks = []
    for side in sizes:
        side = -(-side // descriptor.size_multiple) * descriptor.size_multiple
        x = np.random.rand(1, descriptor.in_channels, side, side).astype(np.float32)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        forward(x)
        torch.cuda.synchronize(device)
        peaks.append((side * side, torch.cuda.max_memory_allocated(device) - base))
    (p0, m0), (p1, m1) = peaks
    return max((m1 - m0) / (p1 - p0), m1 / p1)
