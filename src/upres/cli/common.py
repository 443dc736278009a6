"""What the commands share: option types and groups, exit codes, and one-line messages on stderr."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from upres.io.limits import DEFAULT_MAX_PIXELS, MAX_PIXELS_LIMIT

EXIT_ERROR = 1  # some inputs failed; the rest were processed


EXIT_USAGE = 2  # nothing could be done (bad model, options, config or data)


EXIT_INTERRUPTED = 130


def number(kind: type, low: float, high: float | None = None, low_open: bool = False):
    """An argparse type accepting ``kind`` values in [low, high] ((low, high] if low_open)."""
    span = f"{'(' if low_open else '['}{low}, {'inf' if high is None else high}]"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        below = value <= low if low_open else value < low
        if value != value or below or (high is not None and value > high):  # NaN too
            raise argparse.ArgumentTypeError(f"{text} is out of range {span}")
        return value
    return parse


def _tile(text: str):
    return "auto" if text == "auto" else number(int, 0)(text)


def add_inference_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference")
    g.add_argument("--tile", type=_tile, default="auto",
                   help="input tile side in pixels, 0 for whole images, or auto: the whole image "
                   "when it fits --max-memory, else the fewest tiles that fit (default: auto)")
    g.add_argument("--tile-overlap", type=number(int, 0), default=192,
                   help="input pixels shared by neighbouring tiles (default: 192)")
    g.add_argument("--self-ensemble", choices=("off", "mean", "median"), default="off",
                   help="average the flips/rotations (8x slower, higher PSNR; default: off)")
    g.add_argument("--ensemble-transforms", type=int, choices=(2, 4, 8), default=8,
                   help="flips/rotations a self-ensemble runs: 2 and 4 keep most of the gain of 8 "
                   "at a quarter and a half of its time (default: 8)")
    g.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", "--precision", choices=("auto", "fp32", "bf16", "fp16", "int8"),
                   default="auto", help="auto: fp16 on CUDA, bf16 on CPUs with native bf16, else "
                   "fp32; int8: OpenVINO on a CPU with int8 dot products (VNNI, AMX), quantized "
                   "once on crops of your images (--calibrate) and kept in the cache")
    g.add_argument("--calibrate", metavar="DIR", default=None,
                   help="int8: LR images to calibrate on (default: the images being upscaled; "
                   "predict: --input, with --val's pairs for accuracy control)")
    g.add_argument("--batch-size", type=number(int, 0), default=0,
                   help="tiles per forward pass (default 0: 4 on CUDA, 1 elsewhere)")
    g.add_argument("--max-pixels", type=number(int, 1, MAX_PIXELS_LIMIT), default=DEFAULT_MAX_PIXELS,
                   help="refuse input images with more pixels than this, before decoding "
                   f"(default: {DEFAULT_MAX_PIXELS:,}; at most {MAX_PIXELS_LIMIT:,})")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep NCHW memory layout (channels_last is the default)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--backend", choices=("auto", "torch", "openvino"), default="auto",
                   help="auto: OpenVINO on CPUs where it is installed and the model converts, "
                   "else PyTorch (always PyTorch on CUDA and MPS)")
    g.add_argument("--max-memory", metavar="SIZE", default=None,
                   help="memory target for the whole process on a CPU (for tiles and the result "
                   "on a GPU), e.g. 8G or 512M; a planning target, not a hard limit (default: "
                   "tiles planned for half the free RAM, or of the free GPU memory)")
    g.add_argument("--verbose", action="store_true",
                   help="print each image's tile plan and compute multiplier")


def add_overwrite(p: argparse.ArgumentParser, what: str = "outputs") -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace {what} that exist already (default: an error; upres never "
                   "replaces what it did not make in this run unless asked)")


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_scoring_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--crop-border", type=number(int, 0), default=4,
                   help="pixels cut from each edge (default 4)")
    p.add_argument("--y", action="store_true", help="score the Y channel (BT.601) instead of RGB")


def inference_kwargs(args: argparse.Namespace, inputs: list[str] = (), val: str | None = None) -> dict:
    """The inference options of the command line; int8 calibrates on ``--calibrate`` (else on
    ``inputs``, the images the command reads) and checks accuracy on ``val``'s pairs."""
    return dict(tile=args.tile, tile_overlap=args.tile_overlap, self_ensemble=args.self_ensemble,
                ensemble_transforms=args.ensemble_transforms,
                device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                channels_last=args.channels_last, compile=args.compile, max_pixels=args.max_pixels,
                backend=args.backend, max_memory=args.max_memory,
                **(calibration_kwargs(args.calibrate, inputs, val) if args.dtype == "int8" else {}))


def calibration_kwargs(calibrate: str | None, inputs: list[str], val: str | None) -> dict:
    """``calibrate`` and ``calibrate_pairs`` for int8: the images of ``calibrate`` or of the
    inputs (files, or folders' images), and ``val``'s lr/hr pairs."""
    from upres.inference.ensemble import match_by_stem
    from upres.io import images

    files = []
    for item in [calibrate] if calibrate else inputs:
        path = Path(item)
        files += images.list_images(path) if path.is_dir() else [path]
    pairs = ([(f["lr"], f["hr"]) for f in match_by_stem({"lr": Path(val) / "lr", "hr": Path(val) / "hr"})]
             if val else [])
    return {"calibrate": tuple(files), "calibrate_pairs": tuple(pairs)}


def error(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"error: {message}", file=sys.stderr)


def note(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)
