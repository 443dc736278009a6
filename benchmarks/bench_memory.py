"""Peak memory per input pixel of each architecture, backend and dtype: the footprints behind
``--tile auto``. Each case runs in a fresh process: warm up on a tiny input, reset the peak RSS
(``/proc/self/clear_refs``), run one input of each of two sizes, and take the growth of VmHWM per
input pixel between them. ``--write`` stores the per-channel figures in
``src/upres/inference/footprints.json`` (Linux only).

    .venv/bin/python benchmarks/bench_memory.py --write
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import records

# name, model spec, activation channels of that spec, input sides
MODELS = {
    "x4plus": ("realesrgan-x4plus", None, (96, 192)),
    "rrdb-16": ("tiny:num_feat=16,num_grow_ch=8,num_block=1", None, (192, 384)),
    "rrdb-16-post_up": ("tiny:num_feat=16,num_grow_ch=8,num_block=1,post_up_blocks=[1]", None, (192, 384)),
    "rrdb-16-rotation": ("tiny:num_feat=16,num_grow_ch=8,num_block=1,rotation=True", None, (192, 384)),
}
CASES = [("torch", "bf16"), ("torch", "fp32"), ("openvino", "bf16"), ("openvino", "fp32")]


def _status(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def _model(spec: str):
    import torch

    from upres.io.loading import load_model
    from upres.models import RRDBNet

    if not spec.startswith("tiny:"):
        return load_model(spec)
    torch.manual_seed(0)
    kwargs = {k: eval(v) for k, v in (item.split("=") for item in spec[5:].split(","))}  # noqa: S307
    return RRDBNet(**kwargs).eval()


def measure_one(spec: str, backend: str, dtype: str, side: int) -> dict:
    """In this process: peak RSS growth for one forward pass at ``side`` x ``side``."""
    import torch

    from upres.inference.torch_backend import autocast_context
    from upres.models import describe

    model = _model(spec)
    desc = describe(model)
    if backend == "openvino":
        from upres.inference import openvino_backend as ovb

        compiled = ovb.OpenVinoModel(ovb.convert(model, desc), dtype)

        def forward(x):
            return torch.from_numpy(compiled(x.numpy()))

        amp, layout = torch.float32, torch.contiguous_format
    else:
        forward, layout = model.to(memory_format=torch.channels_last), torch.channels_last
        amp = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    with torch.inference_mode(), autocast_context(torch.device("cpu"), amp):
        forward(torch.rand(1, 3, 16, 16).contiguous(memory_format=layout)).float()
        x = torch.rand(1, 3, side, side).contiguous(memory_format=layout)
        Path("/proc/self/clear_refs").write_text("5")
        base = _status("VmRSS")
        forward(x).float()
        peak = _status("VmHWM")
    return {"bytes": peak - base, "pixels": side * side, "channels": desc.activation_channels}


def run_case(spec: str, backend: str, dtype: str, sides: tuple[int, int]) -> dict:
    points = []
    for side in sides:
        out = subprocess.run([sys.executable, __file__, "--one", spec, backend, dtype, str(side)],
                             capture_output=True, text=True, check=True)
        points.append(json.loads(out.stdout.strip().splitlines()[-1]))
    (a, b) = points
    slope = (b["bytes"] - a["bytes"]) / (b["pixels"] - a["pixels"])
    per_px = max(slope, b["bytes"] / b["pixels"])  # never below the larger run's own average
    return {"bytes_per_pixel": per_px, "channels": b["channels"],
            "per_channel": per_px / b["channels"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=4, metavar=("SPEC", "BACKEND", "DTYPE", "SIDE"))
    parser.add_argument("--write", action="store_true", help="update footprints.json")
    args = parser.parse_args()
    if args.one:
        spec, backend, dtype, side = args.one
        print(json.dumps(measure_one(spec, backend, dtype, int(side))))
        return
    results = {}
    print(f"{'model':18s} {'case':14s} {'KiB/px':>8s} {'channels':>8s} {'B/px/channel':>12s}")
    for name, (spec, _, sides) in MODELS.items():
        for backend, dtype in CASES:
            r = run_case(spec, backend, dtype, sides)
            results[(name, f"{backend}-{dtype}")] = r
            print(f"{name:18s} {backend + '-' + dtype:14s} {r['bytes_per_pixel'] / 1024:8.2f} "
                  f"{r['channels']:8d} {r['per_channel']:12.1f}", flush=True)
            records.append("memory", {"model": name, "case": f"{backend}-{dtype}"}, {
                "kib_per_pixel": round(r["bytes_per_pixel"] / 1024, 2), "channels": r["channels"],
                "bytes_per_pixel_per_channel": round(r["per_channel"], 1)})
    if args.write:
        table = {}
        for case in {c for _, c in results}:
            # plain RRDBNet: the larger per-channel figure of the two widths (conservative)
            table[case] = round(max(results[("x4plus", case)]["per_channel"],
                                    results[("rrdb-16", case)]["per_channel"]), 1)
        path = Path(__file__).parents[1] / "src/upres/inference/footprints.json"
        doc = {"measured_by": "benchmarks/bench_memory.py", "unit": "bytes per input pixel per "
               "activation channel (ModelDescriptor.activation_channels)",
               "bytes_per_pixel_per_channel": {"RRDBNet": dict(sorted(table.items()))}}
        path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
