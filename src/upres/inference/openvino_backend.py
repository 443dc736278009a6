"""OpenVINO as a CPU backend: the loaded PyTorch model converted once (``openvino.convert_model``,
dynamic batch, height and width), kept as IR under the cache folder keyed by the weights' hash,
compiled with bf16 inference precision where the CPU has native bf16 (fp32 elsewhere), and
called like the PyTorch module it replaces. OpenVINO caches the compiled blob itself
(``CACHE_DIR``), so a second process starts in about a second."""

from __future__ import annotations

import contextlib
import os
import secrets
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from upres.io.checkpoints import tensors_sha256
from upres.io.files import cache_dir
from upres.models import ModelDescriptor

PRECISIONS = {"bf16": "bf16", "fp32": "f32"}


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _convert(model: nn.Module, descriptor: ModelDescriptor):
    import openvino as ov

    side = 16 * descriptor.size_multiple
    example = torch.rand(1, descriptor.in_channels, side, side)
    shape = ov.PartialShape([-1, descriptor.in_channels, -1, -1])
    with torch.no_grad():
        return ov.convert_model(model.eval().to("cpu"), example_input=example, input=[shape])


def _cached_ir(model: nn.Module, descriptor: ModelDescriptor, folder: Path):
    """The converted model, from ``folder`` if an earlier run converted the same weights."""
    import openvino as ov

    key = tensors_sha256(model.state_dict())[:32]
    xml = folder / f"{descriptor.arch}-{key}.xml"
    core = ov.Core()
    if xml.exists() and xml.with_suffix(".bin").exists():
        with contextlib.suppress(RuntimeError):  # damaged: convert again
            return core.read_model(str(xml))
    converted = _convert(model, descriptor)
    try:  # write under temporary names, then rename both (a reader never sees half a model)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{xml.stem}.{secrets.token_hex(4)}.xml"
        ov.save_model(converted, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)
    except (OSError, RuntimeError) as err:  # an unwritable cache costs the conversion next time
        warnings.warn(f"cannot keep the converted model in {folder} ({err}); it will be "
                      "converted again next time", stacklevel=3)
    return converted


class OpenVinoModel:
    """(N, C, H, W) float tensor -> (N, C_out, sH, sW) float tensor, like the module it wraps."""

    def __init__(self, model: nn.Module, descriptor: ModelDescriptor, precision: str = "bf16",
                 cache: bool = True) -> None:
        import openvino as ov

        if precision not in PRECISIONS:
            raise ValueError(f"OpenVINO precision must be bf16 or fp32, not {precision!r}")
        folder = cache_dir() / "openvino"
        ir = _cached_ir(model, descriptor, folder) if cache else _convert(model, descriptor)
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if cache:
            with contextlib.suppress(RuntimeError, OSError):
                core.set_property({"CACHE_DIR": str(folder / "blobs")})
        self.compiled = core.compile_model(ir, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = precision

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = self.request.infer({0: array})[0]  # ``array`` stays alive until infer returns
        return torch.from_numpy(np.array(out, copy=True))
