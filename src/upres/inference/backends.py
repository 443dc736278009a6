"""Which backend runs a model, decided in one place: ``choose_backend`` takes a model (a module,
a pretrained name or a weights path), the device, the dtype and the user's preference, and returns
a ``Backend``: the forward callable on host arrays, the model's descriptor, the compute dtype and
the reason for the choice, which the first output line states.

The rules: OpenVINO on a CPU where it is installed and the model converts (fastest there; a
cached conversion runs without importing PyTorch), PyTorch otherwise: always on CUDA and MPS,
for ``--compile``, for bf16 asked on a CPU without native bf16 (OpenVINO would quietly compute
fp32), and for families OpenVINO is known to crash on."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from upres.errors import InferenceError, WeightsError
from upres.inference import memory
from upres.inference.devices import cpu_has_fast_bf16, dtype_reason, pick_dtype, resolve_device
from upres.models.descriptor import ModelDescriptor

if TYPE_CHECKING:
    from torch import nn

    from upres.inference.int8 import Calibration

BackendName = Literal["auto", "torch", "openvino"]
OPENVINO_HINT = "pip install 'upres[openvino]'"


@dataclass
class Backend:
    """A model ready to run: ``forward`` maps (N, C, H, W) float32 host arrays in [0, 1] to
    (N, C_out, sH, sW) float32 host arrays."""

    name: Literal["torch", "openvino"]
    forward: Callable[[np.ndarray], np.ndarray]
    descriptor: ModelDescriptor
    device: str
    dtype: str
    reason: str  # why this backend and dtype, for the first output line
    module: nn.Module | None = None  # the PyTorch module, when PyTorch runs it
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"backend {self.name} ({self.dtype} on {self.device}): {self.reason}"

    def bytes_per_pixel(self) -> float | None:
        """Peak memory per input pixel: measured on the spot on CUDA, from the measured table
        elsewhere (None where this architecture, backend and dtype were never measured)."""
        if self.device.startswith("cuda"):
            from upres.inference.torch_backend import measure_cuda

            return measure_cuda(self.forward, self.descriptor)
        # int8 keeps some layers and its activations between them in floating point: planned as fp32
        dtype = "fp32" if self.dtype == "int8" else self.dtype
        return memory.bytes_per_pixel(self.descriptor, self.name, dtype)


def choose_backend(model: nn.Module | str | Path, device: str = "auto", dtype: str = "auto",
                   backend: BackendName = "auto", descriptor: ModelDescriptor | None = None,
                   compile: bool = False, channels_last: bool = True,
                   cache_converted: bool = True, convert_cache: Path | None = None,
                   calibration: Callable[[], Calibration] | None = None) -> Backend:
    """The backend for ``model`` (see the module's rules), with the reason it was chosen;
    OpenVINO conversions are kept in ``convert_cache`` (default: the user's cache). ``int8``
    runs an IR quantized on ``calibration()`` (built only where no quantization is cached)."""
    from upres.inference import openvino_backend as ovb

    if backend not in ("auto", "torch", "openvino"):
        raise InferenceError(f"backend must be auto, torch or openvino, not {backend!r}")
    device = resolve_device(device)
    if dtype == "fp16" and not device.startswith("cuda"):  # before any loading or conversion
        raise InferenceError(f"dtype fp16 is supported on CUDA only, not on {device.split(':')[0]}; "
                             "use bf16 or fp32")
    source = _Source(model, descriptor)
    if dtype == "int8":
        why_not = _int8_refusal(device, backend, calibration)
        if why_not is None:
            chosen, why_not = _openvino(source, dtype, cache_converted, "int8 as asked (OpenVINO)",
                                        convert_cache, calibration)
            if chosen is not None:
                return chosen
        # a CPU without int8 dot products, or a model OpenVINO does not convert
        warnings.warn(f"int8: {why_not}; using bf16 or fp32 as auto picks", stacklevel=3)
        dtype = "auto"
    if backend == "openvino":
        if device != "cpu":
            raise InferenceError(f"the openvino backend runs on the CPU, not {device}")
        if not ovb.openvino_available():
            raise InferenceError(f"backend openvino needs the openvino package: {OPENVINO_HINT}")
        chosen, refusal = _openvino(source, dtype, cache_converted, "as asked (--backend openvino)",
                                    convert_cache)
        if chosen is None:
            raise InferenceError(f"backend openvino: {refusal}; use --backend torch")
        return chosen
    why_torch = _why_not_openvino(backend, device, dtype, compile)
    if why_torch is None:
        chosen, why_torch = _openvino(source, dtype, cache_converted,
                                      "OpenVINO is installed and the model converts (the fastest "
                                      "CPU backend; --backend torch to change)", convert_cache)
        if chosen is not None:
            return chosen
    return _torch(source, device, dtype, why_torch, compile, channels_last)


def _int8_refusal(device: str, backend: str, calibration) -> str | None:
    """Why int8 falls back to auto (a CPU without int8 dot products: None where it runs); what
    cannot run int8 at all is an error."""
    from upres.inference import openvino_backend as ovb
    from upres.inference.int8 import NNCF_HINT, int8_refusal

    if device != "cpu":
        raise InferenceError(f"int8 runs on the CPU through OpenVINO, not on {device}")
    if backend == "torch":
        raise InferenceError("int8 runs through OpenVINO; drop --backend torch")
    if not ovb.openvino_available():
        raise InferenceError(f"int8 runs through OpenVINO: {OPENVINO_HINT}")
    why = int8_refusal()
    if why and "NNCF" in why:
        raise InferenceError(f"int8 needs NNCF: {NNCF_HINT}")
    if why is None and calibration is None:
        raise InferenceError("int8 needs images to calibrate on: give --calibrate DIR")
    return why


def _why_not_openvino(backend: str, device: str, dtype: str, compile: bool) -> str | None:
    """Why PyTorch runs the model without trying OpenVINO (None: try OpenVINO)."""
    from upres.inference import openvino_backend as ovb

    if backend == "torch":
        return "as asked (--backend torch)"
    if device != "cpu":
        return f"PyTorch runs {device.split(':')[0].upper()} devices"
    if compile:
        return "--compile is a PyTorch feature"
    if not ovb.openvino_available():
        return f"OpenVINO is not installed ({OPENVINO_HINT})"
    if dtype == "bf16" and not cpu_has_fast_bf16():
        return "bf16 on a CPU without native bf16 (OpenVINO would compute fp32)"
    return None


class _Source:
    """The model as given, loaded into PyTorch only when needed (a cached OpenVINO conversion
    needs neither PyTorch nor the network)."""

    def __init__(self, model, descriptor: ModelDescriptor | None) -> None:
        from upres.io.pretrained import PRETRAINED
        from upres.io.published import PUBLISHED, require

        self.given, self.descriptor = model, descriptor
        self.spec = model if isinstance(model, (str, Path)) else None
        if isinstance(self.spec, str) and self.spec in PUBLISHED:
            self.spec = require(self.spec)  # a published name stands for its checked file
        self._module = None if self.spec is not None else model
        if self.spec is not None and str(self.spec) not in PRETRAINED and not Path(self.spec).exists():
            raise WeightsError(f"{self.spec}: no such file (and not a model name: "
                               f"{', '.join([*PRETRAINED, *PUBLISHED])}; upres models lists them)")

    def module(self):
        if self._module is None:
            from upres.io.loading import load_model

            self._module = load_model(self.spec)
        if self.descriptor is None:
            from upres.models.registry import describe

            self.descriptor = describe(self._module)
        return self._module


def _openvino(source: _Source, dtype: str, cache: bool, reason: str, folder: Path | None = None,
              calibration: Callable[[], Calibration] | None = None):
    """(the OpenVINO backend, None), or (None, why not) where the model is not converted; for
    ``int8``, the conversion quantized on ``calibration()`` (or its cached quantization)."""
    from upres.inference import openvino_backend as ovb

    folder = Path(folder) if folder is not None else ovb.ir_folder()
    key = ovb.source_key(source.spec) if source.spec is not None and cache else None
    hit = ovb.read_cached(key, folder) if key else None
    if hit is None:
        refusal = openvino_refusal(source.module(), source.descriptor)
        if refusal:
            return None, refusal
        if cache and key is None:
            key = ovb.module_key(source.module(), source.descriptor)
            hit = ovb.read_cached(key, folder)
    try:
        if hit is None:
            ir = ovb.convert(source.module(), source.descriptor, folder if cache else None)
            if key:
                ovb.store(ir, source.descriptor, key, folder)
        else:
            ir, stored = hit
            source.descriptor = source.descriptor or stored
        if dtype == "int8":
            ir = _quantized(ir, source, key, folder if cache else None, calibration)
            chosen, rest = "int8", pick_dtype("auto", "cpu", source.descriptor.dtypes)
        else:
            chosen = rest = pick_dtype(dtype, "cpu", source.descriptor.dtypes)
        forward = ovb.OpenVinoModel(ir, rest, folder / "blobs" if cache else None)
    except InferenceError:
        raise
    except Exception as err:  # any conversion failure: PyTorch still runs the model
        text = str(err).strip()
        return None, ("OpenVINO could not convert the model: "
                      f"{text.splitlines()[0][:200] if text else type(err).__name__}")
    why = (f"{reason}; the layers kept out of int8 in {rest}" if chosen == "int8" else
           f"{reason}; {dtype_reason(dtype, chosen, 'cpu', source.descriptor.dtypes)}")
    return Backend("openvino", forward, source.descriptor, "cpu", chosen, why), None


def _quantized(ir, source: _Source, key: str | None, folder: Path | None, calibration):
    """The IR quantized to int8 on the calibration set, read from the cache where this model was
    quantized on the same set with the same settings (``folder`` None: not kept)."""
    from upres.inference import int8
    from upres.inference import openvino_backend as ovb

    calib = calibration()
    model_key = key or ovb.module_key(source.module(), source.descriptor)
    qkey = int8.quantized_key(model_key, calib)
    hit = ovb.read_cached(qkey, folder) if folder is not None else None
    if hit is not None:
        return hit[0]
    quantized = int8.quantize(ir, calib, source.descriptor.scale)
    if folder is not None:
        ovb.store(quantized, source.descriptor, qkey, folder)
    return quantized


def openvino_refusal(module, descriptor: ModelDescriptor) -> str | None:
    """Why this model is not converted (a converter crash cannot be caught): a registered family
    known not to convert, or a spandrel architecture upres has not verified."""
    from upres.models import registry, zoo

    why = registry.backend_refusal(descriptor.arch, "openvino")
    if why:
        return f"OpenVINO does not convert {descriptor.arch}: {why}"
    if descriptor.arch not in registry.ARCHITECTURES and zoo.is_spandrel_module(module):
        return f"OpenVINO is not verified for {descriptor.arch}"
    return None


def _torch(source: _Source, device: str, dtype: str, why: str, compile: bool,
           channels_last: bool) -> Backend:
    import torch

    from upres.inference.torch_backend import TorchModel

    module = source.module()
    chosen = pick_dtype(dtype, device, source.descriptor.dtypes)
    forward = TorchModel(module, torch.device(device), chosen, channels_last, compile)
    reason = f"{why}; {dtype_reason(dtype, chosen, device, source.descriptor.dtypes)}"
    return Backend("torch", forward, source.descriptor, device, chosen, reason, forward.module)
