"""ONNX export with dynamic batch, height and width (the torch.export-based exporter), for
onnxruntime, OpenVINO, chaiNNer and other runtimes. Needs ``pip install 'upres[onnx]'``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from upres.errors import WeightsError
from upres.io.files import atomic_path
from upres.models import ModelDescriptor


def export_onnx(model: nn.Module, descriptor: ModelDescriptor, path: str | Path,
                opset: int = 18, overwrite: bool = True) -> None:
    try:
        import onnxscript  # noqa: F401  (the exporter's own dependency; fail with a clear hint)
    except ImportError:
        raise WeightsError(f"{path}: ONNX export needs onnx and onnxscript: "
                           "pip install 'upres[onnx]'") from None
    model = model.eval().to("cpu")
    m = descriptor.size_multiple
    dims = {0: torch.export.Dim("batch", min=1, max=64)}
    for axis, name in ((2, "height"), (3, "width")):  # sizes must stay multiples of m
        dim = torch.export.Dim(name, min=1, max=8192)
        dims[axis] = dim * m if m > 1 else dim
    side = max(16 * m, -(-descriptor.min_size // m) * m * 2)
    example = torch.rand(2, descriptor.in_channels, side, side)
    try:
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["input"],
                                    output_names=["output"], dynamic_shapes=(dims,),
                                    opset_version=opset, verbose=False)
    except Exception as err:  # the exporter's many error types: name the model and the cause
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise WeightsError(f"{path}: {descriptor.arch} does not export to ONNX with dynamic "
                           f"sizes ({first}); use .safetensors or .pth") from None
    with atomic_path(path, overwrite) as tmp:
        program.save(str(tmp))
