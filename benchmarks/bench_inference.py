"""Whole-process inference speed and memory on this machine, every figure from this one run:
for each input size, the default ``upres upscale`` (model load included) against PyTorch alone
(``--backend torch``), a standalone 10-line OpenVINO script on upres's own ONNX export, and eager
fp32 NCHW PyTorch (the BasicSR / Real-ESRGAN path); each case in its own process, with its wall
time, output MP/s, useful GFLOP/s (model FLOPs counted with torch's FlopCounterMode), the share of
this machine's bf16 and fp32 matmul peaks measured in the same run, peak RSS (``wait4``) and the
tiling compute multiplier. The cases a target compares (default against the script or eager
PyTorch) run ``--repeat`` times interleaved and report the median (peak RSS: the largest). Then
self-ensemble x8 against one pass, and a huge input through a tiny RRDBNet with a 2 GiB budget
(bounded output memory).

    .venv/bin/python benchmarks/bench_inference.py                      # about 35 min on 2 cores
    .venv/bin/python benchmarks/bench_inference.py --sizes 256x256 --skip-huge   # quick look
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

import records

PY = sys.executable
OV_SCRIPT = textwrap.dedent("""
    import sys, cv2, numpy as np, openvino as ov
    onnx, src, dst = sys.argv[1:4]
    core = ov.Core()
    model = core.compile_model(core.read_model(onnx), "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    img = cv2.imread(src, cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32) / 255
    out = model(np.ascontiguousarray(img.transpose(2, 0, 1))[None])[0][0]
    out = np.clip(out.transpose(1, 2, 0)[:, :, ::-1] * 255 + 0.5, 0, 255).astype(np.uint8)
    cv2.imwrite(dst, out)
""")
EAGER_SCRIPT = textwrap.dedent("""
    import sys, cv2, numpy as np, torch
    from upres.io.loading import load_model
    model_name, src, dst = sys.argv[1:4]
    model = load_model(model_name)
    img = cv2.imread(src, cv2.IMREAD_COLOR)[:, :, ::-1].astype(np.float32) / 255
    with torch.inference_mode():
        out = model(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None])[0]
    out = np.clip(out.permute(1, 2, 0).numpy()[:, :, ::-1] * 255 + 0.5, 0, 255).astype(np.uint8)
    cv2.imwrite(dst, out)
""")
ENSEMBLE_SCRIPT = textwrap.dedent("""
    import sys, time, numpy as np
    from skimage import data
    from upres.inference.upscaler import Upscaler
    side = int(sys.argv[1])
    img = data.astronaut()[:side, 64:64 + side].astype(np.float32) / 255
    one, eight = Upscaler("realesrgan-x4plus"), Upscaler("realesrgan-x4plus", self_ensemble="mean")
    one.upscale_float(img)  # both at the measured shape first: kernels and shapes compiled
    eight.upscale_float(img[:64, :64])
    times = []
    for up in (one, eight, one):  # one pass before and after the x8, as the CPU heats up
        start = time.perf_counter(); up.upscale_float(img); times.append(time.perf_counter() - start)
    print((times[0] + times[2]) / 2, times[1], eight.engine.ensemble_batch, "|", eight.notes[0])
""")


def run(cmd: list[str]) -> dict:
    """Wall seconds, peak RSS (bytes) and stderr of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {"seconds": seconds, "rss": usage.ru_maxrss * 1024, "stderr": err, "stdout": out}


def matmul_peak(dtype: torch.dtype, n: int = 3072, repeat: int = 5) -> float:
    """GFLOP/s of a large square matmul, best of ``repeat``."""
    a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
    a @ b
    best = min(_time(lambda: a @ b) for _ in range(repeat))
    return 2 * n ** 3 / best / 1e9


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def flops_per_pixel(model_name: str) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from upres.io.loading import load_model

    model = load_model(model_name)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, 64, 64))
    return counter.get_total_flops() / (64 * 64)


def photo_of_size(width: int, height: int) -> np.ndarray:
    """scikit-image's astronaut, mirrored as often as needed: real photo content at any size."""
    from skimage import data

    tile = data.astronaut()
    block = np.concatenate([tile, tile[:, ::-1]], axis=1)
    block = np.concatenate([block, block[::-1]], axis=0)
    reps = (-(-height // block.shape[0]), -(-width // block.shape[1]), 1)
    return np.ascontiguousarray(np.tile(block, reps)[:height, :width])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="realesrgan-x4plus")
    parser.add_argument("--sizes", default="256x256,512x512,800x600,1920x1080")
    parser.add_argument("--skip-huge", action="store_true", help="skip the 8000x6000 tiny-model case")
    parser.add_argument("--huge", default="8000x6000")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each case a target compares (median reported)")
    args = parser.parse_args()
    from upres.io import images

    work = Path(tempfile.mkdtemp(prefix="upres-bench-"))
    bf16_peak, fp32_peak = matmul_peak(torch.bfloat16), matmul_peak(torch.float32)
    fpp = flops_per_pixel(args.model)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul peak bf16 "
          f"{bf16_peak:.0f} GFLOP/s, fp32 {fp32_peak:.0f} GFLOP/s; {args.model}: "
          f"{fpp / 1e6:.2f} MFLOP per input pixel", flush=True)
    upres = [PY, "-m", "upres.cli", "upscale", "--model", args.model, "--quiet", "--verbose", "--overwrite"]
    images.write_image(work / "warm.png", photo_of_size(48, 48))
    first = run([*upres, str(work / "warm.png"), "-o", str(work / "warm")])
    print(f"first run (converts to OpenVINO IR, cached for later runs): {first['seconds']:.1f} s")
    onnx = work / "model.onnx"
    export = run([PY, "-m", "upres.cli", "convert", args.model, str(onnx)])
    print(f"ONNX export for the standalone script: {export['seconds']:.1f} s (not timed below)")
    (work / "ov.py").write_text(OV_SCRIPT)
    (work / "eager.py").write_text(EAGER_SCRIPT)

    header = ("| input | case | seconds | output MP/s | GFLOP/s | % bf16 peak | % fp32 peak "
              "| peak RSS GiB | tiles (compute x) |")
    print("\n" + header + "\n|" + "---|" * 9, flush=True)
    summary = {}
    for size in args.sizes.split(","):
        w, h = map(int, size.split("x"))
        src = work / f"in_{size}.png"
        images.write_image(src, photo_of_size(w, h))
        cases = [("upres default", [*upres, str(src), "-o", str(work / f"d_{size}")]),
                 ("upres --backend torch", [*upres, "--backend", "torch", str(src), "-o",
                                            str(work / f"t_{size}")])]
        if w * h <= 800 * 600:
            cases.append(("OpenVINO script (bf16, ONNX)", [PY, str(work / "ov.py"), str(onnx), str(src),
                                                           str(work / f"ov_{size}.png")]))
        if w * h <= 256 * 256:
            cases.append(("eager fp32 NCHW (BasicSR path)", [PY, str(work / "eager.py"), args.model,
                                                             str(src), str(work / f"e_{size}.png")]))
        # The cases a target compares run `repeat` times, interleaved (A B A B ...): one run of
        # each differs by up to 0.5 s on this machine, so medians are compared.
        rounds = args.repeat if len(cases) > 2 else 1
        samples: dict[str, list[dict]] = {name: [] for name, _ in cases}
        for i in range(rounds):
            for name, cmd in cases:
                if i == 0 or name != "upres --backend torch":  # not in a target: once
                    samples[name].append(run(cmd))
        for name, _ in cases:
            runs = sorted(samples[name], key=lambda r: r["seconds"])
            r = runs[len(runs) // 2]  # the median run
            plan = re.search(r": (whole image|\d+x\d+ tiles of \d+x\d+), compute x([0-9.]+)", r["stderr"])
            backend = re.search(r"backend (\w+ \(\w+\))", r["stderr"])
            label = name + (f" [{backend.group(1)}]" if backend and name == "upres default" else "")
            gflops = fpp * w * h / r["seconds"] / 1e9
            tiles = f"{plan.group(1)} (x{float(plan.group(2)):.3f})" if plan else "whole image (x1.000)"
            each = ", ".join(f"{x['seconds']:.1f}" for x in samples[name])
            seconds = f"{r['seconds']:.1f}" + (f" ({each})" if len(runs) > 1 else "")
            rss = max(x["rss"] for x in runs)
            print(f"| {size} | {label} | {seconds} | {w * h * 16 / 1e6 / r['seconds']:.3f} | "
                  f"{gflops:.0f} | {100 * gflops / bf16_peak:.0f}% | {100 * gflops / fp32_peak:.0f}% | "
                  f"{rss / 2**30:.2f} | {tiles} |", flush=True)
            records.append("inference", {"kind": "pass", "input": size, "case": name}, {
                "seconds": round(r["seconds"], 1), "runs": [round(x["seconds"], 1) for x in samples[name]],
                "output_mp_s": round(w * h * 16 / 1e6 / r["seconds"], 3), "gflop_s": round(gflops),
                "pct_bf16_peak": round(100 * gflops / bf16_peak),
                "pct_fp32_peak": round(100 * gflops / fp32_peak),
                "peak_rss_gib": round(rss / 2**30, 2), "tiles": tiles},
                note=f"matmul peak in the run: bf16 {bf16_peak:.0f}, fp32 {fp32_peak:.0f} GFLOP/s"
                     + (f"; {backend.group(1)}" if backend and name == "upres default" else ""))
            summary[(size, name)] = r["seconds"]
            summary[(size, name, "rss")] = rss
            summary[(size, name, "x")] = float(plan.group(2)) if plan else 1.0

    ens, note = run([PY, "-c", ENSEMBLE_SCRIPT, "256"])["stdout"].strip().split("|")
    one, eight, batch = ens.split()
    one, eight = float(one), float(eight)
    print(f"\nself-ensemble x8 (mean), 256x256, in one process: one pass {one:.2f} s (mean of the "
          f"passes before and after), x8 {eight:.2f} s = {eight / one:.2f}x one pass ({note.strip()}, "
          f"{batch} flips/rotations per forward pass)")
    records.append("inference", {"kind": "self-ensemble", "input": "256x256",
                                 "case": "self-ensemble x8 (mean)"},
                   {"one_pass_s": round(one, 2), "x8_s": round(eight, 2), "ratio": round(eight / one, 2)},
                   note=f"{note.strip()}, {batch} flips/rotations per forward pass")
    if not args.skip_huge:
        _huge(args.huge, work, images, summary)
    _targets(summary)


def _huge(size: str, work: Path, images, summary: dict) -> None:
    import torch as t

    from upres.io.loading import save_model
    from upres.models import RRDBNet

    w, h = map(int, size.split("x"))
    t.manual_seed(0)
    save_model(RRDBNet(num_feat=16, num_block=1, num_grow_ch=8), work / "tiny.safetensors")
    src = work / "huge.png"
    images.write_image(src, photo_of_size(w, h))
    r = run([PY, "-m", "upres.cli", "upscale", str(src), "-o", str(work / "huge_out"), "--model",
             str(work / "tiny.safetensors"), "--max-memory", "2G", "--quiet", "--verbose"])
    plan = re.search(r"huge.png: (.*)", r["stderr"])
    result_mb = (work / "huge_out" / "huge.png").stat().st_size / 1e6
    print(f"\n{size} through a tiny RRDBNet (16/8/1), --max-memory 2G: {r['seconds']:.0f} s, peak RSS "
          f"{r['rss'] / 2**30:.2f} GiB, result {result_mb:.0f} MB PNG; plan {plan.group(1) if plan else '?'}")
    summary["huge_rss"] = r["rss"]
    records.append("inference", {"kind": "huge", "input": size,
                                 "case": "tiny RRDBNet 16/8/1, --max-memory 2G"},
                   {"seconds": round(r["seconds"]), "peak_rss_gib": round(r["rss"] / 2**30, 2),
                    "tiles": plan.group(1) if plan else "?"})


def _targets(s: dict) -> None:
    print("\ntargets:")
    for size in ("512x512", "800x600"):
        if (size, "upres default") in s and (size, "OpenVINO script (bf16, ONNX)") in s:
            ratio = s[(size, "OpenVINO script (bf16, ONNX)")] / s[(size, "upres default")]
            print(f"- {size}: default vs standalone OpenVINO script: {ratio:.2f}x as fast (target >= 1)")
    if ("256x256", "eager fp32 NCHW (BasicSR path)") in s:
        ratio = s[("256x256", "eager fp32 NCHW (BasicSR path)")] / s[("256x256", "upres default")]
        print(f"- 256x256: default vs eager fp32 NCHW: {ratio:.2f}x as fast (target >= 3)")
    mults = {k[0]: v for k, v in s.items() if isinstance(k, tuple) and len(k) == 3 and k[2] == "x"
             and k[1] == "upres default"}
    print(f"- tiling multiplier, default: max x{max(mults.values()):.3f} over {', '.join(mults)} "
          "(target <= 1.15)")
    if ("512x512", "upres default", "rss") in s:
        print(f"- 512x512 peak RSS: {s[('512x512', 'upres default', 'rss')] / 2**30:.2f} GiB (target <= 2)")
    if "huge_rss" in s:
        print(f"- huge input peak RSS: {s['huge_rss'] / 2**30:.2f} GiB (target < 3)")


if __name__ == "__main__":
    main()
