"""OpenVINO as a CPU backend. A model is converted once (``openvino.convert_model`` on the loaded
PyTorch module, dynamic batch, height and width) and kept as IR under the cache folder, named by
the hash of its source (a weights file's bytes, a pretrained model's installed files, or a
module's tensors) with a JSON sidecar holding its ``ModelDescriptor`` and the IR's own hash. A
later run with the same source reads the IR without importing PyTorch or building the network;
OpenVINO caches the compiled blob too (``CACHE_DIR``). Compiled with bf16 inference precision
where the CPU has native bf16, fp32 elsewhere, and called like every backend: host arrays in and
out."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import secrets
import sys
import warnings
from pathlib import Path

import numpy as np

from upres.io.files import cache_dir, files_sha256
from upres.io.ticker import ticking
from upres.models.descriptor import ModelDescriptor

PRECISIONS = {"bf16": "bf16", "fp32": "f32"}
log = logging.getLogger("upres")
IR_FORMAT = 2  # bump when the conversion changes: older IRs are then converted again


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def _ov():
    """``import openvino`` with its usage telemetry off. Importing openvino (and every
    ``convert_model``) reports to Google Analytics unless the user opted out; upres does not let
    it: where upres imports openvino first, the telemetry package is blocked and OpenVINO falls
    back to its own stub (set UPRES_OPENVINO_TELEMETRY=1 to leave it on)."""
    if "openvino" not in sys.modules and os.environ.get("UPRES_OPENVINO_TELEMETRY") != "1":
        sys.modules.setdefault("openvino_telemetry", None)  # ``import openvino_telemetry`` fails
    import openvino

    return openvino


def ir_folder() -> Path:
    return cache_dir() / "openvino"


def source_key(spec: str | Path) -> str | None:
    """The cache name of a pretrained name or weights file, from its bytes (no PyTorch needed);
    None where there is nothing to hash (the loader then reports the problem)."""
    from upres.io.pretrained import PRETRAINED, pretrained_ncnn_files

    if isinstance(spec, str) and spec in PRETRAINED:
        param = pretrained_ncnn_files(spec)
        files = [param, param.with_suffix(".bin")]
    else:
        path = Path(spec)
        files = ([path.with_suffix(".param"), path.with_suffix(".bin")]
                 if path.suffix.lower() in (".param", ".bin") and path.with_suffix(".param").is_file()
                 else [path])
    if not all(f.is_file() for f in files):
        return None
    return f"src-{IR_FORMAT}-" + files_sha256(*files)[:32]


def module_key(model, descriptor: ModelDescriptor) -> str:
    """The cache name of an in-memory PyTorch module: its class, structure (``repr``), descriptor
    and tensors (two parameter-free modules differ by class and structure alone)."""
    from upres.io.weights import tensors_sha256

    kind = type(model)
    text = f"{kind.__module__}.{kind.__qualname__}|{model!r}|{descriptor!r}|"
    text += tensors_sha256(model.state_dict())
    return f"mod-{IR_FORMAT}-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def read_cached(key: str, folder: Path | None = None):
    """(IR, descriptor) stored under ``key``, or None. A damaged entry (unreadable sidecar, IR
    bytes that no longer match their recorded hash) or a foreign one (its sidecar records another
    key: the entry of another model copied under this name) warns and reads as missing: it is
    converted again and replaced."""
    ov = _ov()

    folder = folder or ir_folder()
    xml, meta = folder / f"{key}.xml", folder / f"{key}.json"
    if not meta.exists():
        return None
    try:
        record = json.loads(meta.read_text())
        if record.get("key") != key:
            raise ValueError(f"it was made from another model (recorded as {str(record.get('key'))[:48]!r})")
        if record.get("ir_sha256") != files_sha256(xml, xml.with_suffix(".bin")):
            raise ValueError("the IR files do not match their recorded hash")
        fields = record["descriptor"]
        descriptor = ModelDescriptor(**{**fields, "dtypes": tuple(fields["dtypes"])})
        return ov.Core().read_model(str(xml)), descriptor
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        warnings.warn(f"{meta}: damaged OpenVINO cache entry ({err}); converting again",
                      stacklevel=2)
        return None


def convert(model, descriptor: ModelDescriptor, folder: Path | None = None):
    """The PyTorch module as an OpenVINO model with dynamic batch, height and width. The tracer's
    warnings (data-dependent shapes that the dynamic axes cover, torch.jit's deprecation) say
    nothing a user can act on, so they are silenced here."""
    ov = _ov()
    import torch

    side = max(16, descriptor.min_size) * descriptor.size_multiple
    example = torch.rand(1, descriptor.in_channels, side, side)
    shape = ov.PartialShape([-1, descriptor.in_channels, -1, -1])
    log.info("converting %s to OpenVINO%s (x4plus took 12 to 40 s here, window transformers take "
             "minutes) ...", descriptor.arch, f", once (kept in {folder})" if folder else "")
    with torch.no_grad(), _no_telemetry(), warnings.catch_warnings(), \
            ticking(f"converting {descriptor.arch} to OpenVINO", first=10.0):  # announced above
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=FutureWarning)
        return ov.convert_model(model.eval().to("cpu"), example_input=example, input=[shape])


@contextlib.contextmanager
def _no_telemetry():
    """``openvino.convert_model`` reports usage to Google Analytics unless the user opted out;
    a conversion by upres never does (OpenVINO's own stub takes the telemetry's place)."""
    from openvino.tools.ovc import convert_impl, telemetry_stub, telemetry_utils, utils

    modules = [m for m in (convert_impl, telemetry_utils, utils) if hasattr(m, "tm")]
    saved = convert_impl.init_ovc_telemetry, [m.tm for m in modules]
    convert_impl.init_ovc_telemetry = lambda *args, **kwargs: telemetry_stub.Telemetry()
    for module in modules:
        module.tm = telemetry_stub
    try:
        yield
    finally:
        convert_impl.init_ovc_telemetry = saved[0]
        for module, tm in zip(modules, saved[1]):
            module.tm = tm


def store(ir, descriptor: ModelDescriptor, key: str, folder: Path | None = None) -> None:
    """Keep a conversion: IR under temporary names renamed into place, then the sidecar (which
    marks the entry complete). A cache that cannot be written warns and costs a conversion next
    time."""
    ov = _ov()

    folder = folder or ir_folder()
    xml = folder / f"{key}.xml"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{secrets.token_hex(4)}.xml"
        ov.save_model(ir, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp, xml)
        record = {"format": IR_FORMAT, "key": key, "descriptor": dataclasses.asdict(descriptor),
                  "ir_sha256": files_sha256(xml, xml.with_suffix(".bin"))}
        tmp_meta = folder / f".{key}.{secrets.token_hex(4)}.json"
        tmp_meta.write_text(json.dumps(record, indent=1))
        os.replace(tmp_meta, folder / f"{key}.json")
    except (OSError, RuntimeError) as err:
        warnings.warn(f"cannot keep the converted model in {folder} ({err}); it will be "
                      "converted again next time", stacklevel=3)


class OpenVinoModel:
    """(N, C, H, W) float32 array -> (N, C_out, sH, sW) float32 array through a compiled
    OpenVINO model; ``blobs`` is where OpenVINO keeps compiled blobs (None: not kept)."""

    def __init__(self, ir, precision: str = "bf16", blobs: Path | None = None) -> None:
        ov = _ov()

        if precision not in PRECISIONS:
            raise ValueError(f"OpenVINO precision must be bf16 or fp32, not {precision!r}")
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if blobs is not None:
            with contextlib.suppress(RuntimeError, OSError):
                core.set_property({"CACHE_DIR": str(blobs)})
        self.compiled = core.compile_model(ir, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.precision = precision

    def __call__(self, x: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(x, dtype=np.float32)
        out = self.request.infer({0: array})[0]  # ``array`` stays alive until infer returns
        return np.array(out, copy=True)
