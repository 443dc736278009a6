"""What a person sees: the longest stretch without any output (a line, a progress-bar update)
of commands that used to run silently for minutes, each in a fresh cache so one-time work
(model conversion) is included. Run it alone on an idle machine.

    python benchmarks/bench_silence.py DATA [--out DIR]

DATA is a competition folder (train/lr, train/hr, test/lr), e.g. ../shared/data/minicomp. For
each command it prints the wall time, the longest silence, and the output around it. Each
command runs on a pseudo-terminal, as a person would run it; PYTHONPATH=OTHER/src measures
another checkout (an older commit) with the same options."""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import records
from upres.io import images


def watch(argv: list[str], env: dict) -> tuple[float, float, str]:
    """Wall time, the longest gap between two pieces of output, and the text before that gap;
    the command runs on a pseudo-terminal, so it shows what a person at a terminal sees
    (progress bars included: tqdm hides them when output goes to a pipe)."""
    began = last = time.monotonic()
    longest, before, tail = 0.0, "", ""
    master, slave = pty.openpty()
    # a terminal's size (40 x 120): at 0 columns tqdm draws nothing
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the command closed the terminal (it ended)
            chunk = b""
        if not chunk:
            break
        now = time.monotonic()
        if now - last > longest:
            longest, before = now - last, tail
        last = now
        tail = (tail + chunk.decode(errors="replace"))[-160:]
    os.close(master)
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(argv)} failed with exit {proc.returncode}:\n{tail}")
    end = time.monotonic()
    if end - last > longest:  # the longest silence is the last one: after all output, to exit
        longest, before = end - last, tail.rstrip() + " [then silent until it exits]"
    lines = [line.strip() for line in before.replace("\r", "\n").split("\n") if line.strip()]
    return end - began, longest, " ".join(lines[-1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()))
    args = parser.parse_args()
    data, out = args.data.resolve(), args.out.resolve()
    photo = sorted((data / "test" / "lr").iterdir())[0]
    one = out / "one"
    one.mkdir(parents=True, exist_ok=True)
    images.write_image(one / photo.name, images.read_image(photo))
    upres = [sys.executable, "-m", "upres.cli"]
    pth = out / "x4plus.pth"
    cases = [
        ("convert x4plus to .pth (fresh cache: ncnn conversion)",
         [*upres, "convert", "realesrgan-x4plus", str(pth)]),
        ("upscale with a .pth, OpenVINO (first run: IR conversion)",
         [*upres, "upscale", str(one), "-o", str(out / "up"), "--model", str(pth)]),
        ("upscale --self-ensemble mean, one image",
         [*upres, "upscale", str(one), "-o", str(out / "se"), "--self-ensemble", "mean"]),
        ("fingerprint DATA",
         [*upres, "fingerprint", str(data), "--out", str(out / "fp")]),
        ("train finetune-cpu, 20 steps with a validation at 0 and 20",
         [*upres, "train", "finetune-cpu", "--data", str(data), "--run-dir", str(out / "run"),
          "train.iterations=20", "train.val_every=20", "train.checkpoint_every=20"]),
        ("demo", [*upres, "demo", "-o", str(out / "demo")]),
    ]
    env = dict(os.environ, XDG_CACHE_HOME=str(out / "cache"))
    print("| command | wall (s) | longest silence (s) | output before it |\n|---|---|---|---|")
    for name, argv in cases:
        wall, silence, before = watch(argv, env)
        print(f"| {name} | {wall:.1f} | {silence:.1f} | `{before[-80:]}` |", flush=True)
        code = os.environ.get("PYTHONPATH") or "this checkout"
        records.append("silence", {"command": name, "code": code},
                       {"wall_s": round(wall, 1), "longest_silence_s": round(silence, 1)},
                       note=f"output before it: {before[-80:]}")


if __name__ == "__main__":
    main()
