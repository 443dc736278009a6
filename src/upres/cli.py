"""``upres`` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from upres import __version__

EXIT_ERROR = 1  # some inputs failed; the rest were processed
EXIT_USAGE = 2  # nothing could be done (bad model, options or config)


class CliError(Exception):
    """An error that stops the command; printed without a traceback."""


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference")
    g.add_argument("--tile", type=int, default=512,
                   help="input tile side in pixels; 0 runs whole images (default: 512)")
    g.add_argument("--tile-overlap", type=int, default=192,
                   help="input pixels shared by neighbouring tiles (default: 192)")
    g.add_argument("--self-ensemble", choices=("off", "mean", "median"), default="off",
                   help="average the 8 flips/rotations (8x slower, higher PSNR; default: off)")
    g.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32")
    g.add_argument("--batch-size", type=int, default=0,
                   help="tiles per forward pass (default 0: 4 on CUDA, 1 elsewhere)")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep NCHW memory layout (channels_last is the default)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")


def _add_scoring_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--crop-border", type=int, default=4, help="pixels cut from each edge (default 4)")
    p.add_argument("--y", action="store_true", help="score the Y channel (BT.601) instead of RGB")


def _inference_kwargs(args: argparse.Namespace) -> dict:
    return dict(tile=args.tile, tile_overlap=args.tile_overlap, self_ensemble=args.self_ensemble,
                device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                channels_last=args.channels_last, compile=args.compile)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upres", description="PSNR-first 4x single-image super-resolution (RRDBNet).")
    parser.add_argument("--version", action="version", version=f"upres {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("upscale", help="upscale image files or folders",
                       description="Upscale images with a pretrained name or a weights file. "
                       "Unreadable files are reported by name; the others are still processed "
                       "and the exit code is 1 at the end. Inputs are never overwritten.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="output folder")
    p.add_argument("--model", default="realesrgan-x4plus",
                   help="pretrained name (realesrgan-x4plus, realesrgan-x4plus-anime) or a "
                   ".safetensors / .pth / ncnn .param path (default: realesrgan-x4plus)")
    p.add_argument("--ext", choices=("png", "webp", "jpg"), default="png",
                   help="output format (default: png; 16-bit needs png)")
    p.add_argument("--suffix", default="", help="text added to each output file's stem")
    p.add_argument("--alpha", choices=("bicubic", "model"), default="bicubic",
                   help="how to upscale an alpha channel (default: bicubic)")
    p.add_argument("--outscale", type=float, default=None,
                   help="final scale when it differs from the model's, e.g. 2 or 3.5 with an x4 "
                   "model (resized after the model: area when shrinking, Lanczos when growing)")
    _add_inference_options(p)
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("convert", help="convert weights between formats",
                       description="Convert weights: SRC is a pretrained name, a .pth, a "
                       ".safetensors or an ncnn .param; DST's extension (.safetensors, .pth or "
                       ".onnx) chooses the format. .pth output is BasicSR-style "
                       "{'params_ema': ...}; .onnx has dynamic batch/height/width and needs "
                       "pip install 'upres[onnx]'.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("train", help="train or fine-tune RRDBNet on LR/HR pairs",
                       description="Train from a YAML config (a path, or a shipped name: "
                       "recipe-x4plus, smoke-cpu). Overrides: key.path=value, e.g. train.lr=1e-4. "
                       "Multi-GPU: torchrun --nproc_per_node N -m upres.cli train CONFIG ...")
    p.add_argument("config", metavar="CONFIG", help="YAML file or shipped config name")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--data", metavar="DIR", help="competition folder (train/lr, train/hr, "
                   "optional val/lr, val/hr); sets data.root")
    p.add_argument("--run-dir", metavar="DIR", help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="resume from a checkpoint; auto takes the latest in the run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="score predictions against ground truth (PSNR, SSIM)",
                       description="PSNR and SSIM as BasicSR computes them (uint8, crop border, "
                       "RGB or BT.601 Y). With --lr, bicubic upsampling of the LR is scored beside "
                       "every image. Files are matched by name; mismatches are errors.")
    p.add_argument("--pred", required=True, metavar="DIR", help="predicted (upscaled) images")
    p.add_argument("--gt", required=True, metavar="DIR", help="ground-truth HR images, same names")
    p.add_argument("--lr", metavar="DIR", help="LR inputs, to score bicubic beside")
    _add_scoring_options(p)
    p.add_argument("--csv", metavar="FILE", help="write per-image scores and the mean")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="predict a test folder with one model or an ensemble",
                       description="Upscale every image of --input into the new folder --output "
                       "(PNG, same names, exactly scale x size). Several --model: soft voting with "
                       "--weights psnr (w_i = PSNR_i / sum PSNR, the recipe's rule), inv-mse "
                       "(w_i proportional to 1/MSE_i), fit (non-negative weights summing to 1 that "
                       "minimise the validation MSE) or explicit w1,w2,... PSNR-based weights need "
                       "--val DIR (with lr/ and hr/). Weights and validation PSNRs are written to "
                       "OUTPUT.ensemble.json.")
    p.add_argument("--model", action="append", required=True, metavar="M",
                   help="pretrained name or weights path; repeat for an ensemble")
    p.add_argument("--input", required=True, metavar="DIR", help="folder of LR test images")
    p.add_argument("--output", required=True, metavar="DIR", help="a new folder")
    p.add_argument("--weights", default="psnr", help="psnr | inv-mse | fit | w1,w2,... (default psnr)")
    p.add_argument("--val", metavar="DIR", help="validation folder with lr/ and hr/")
    p.add_argument("--zip", action="store_true", help="also write OUTPUT.zip")
    p.add_argument("--report", metavar="DIR", help="HTML report of the validation predictions")
    _add_inference_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("report", help="HTML report comparing prediction folders",
                       description="Per-image PSNR/SSIM table (bicubic and each prediction folder) "
                       "and zoomed crops (bicubic | predictions | ground truth), offline HTML.")
    p.add_argument("--pred", action="append", required=True, metavar="[NAME=]DIR",
                   help="prediction folder; repeatable")
    p.add_argument("--gt", required=True, metavar="DIR", help="ground-truth HR images")
    p.add_argument("--lr", required=True, metavar="DIR", help="LR inputs (for bicubic)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="report folder")
    _add_scoring_options(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("experiment", help="run a plan of training arms and tabulate them",
                       description="Train every arm of PLAN (same data, seed, iterations and "
                       "validation), skipping finished arms and resuming an interrupted one, then "
                       "write OUT/table.md, OUT/table.csv and OUT/psnr.png.")
    p.add_argument("plan", metavar="PLAN", help="plan YAML or a shipped plan name "
                   "(seed-ablation-cpu, recipe-comparison)")
    p.add_argument("--data", metavar="DIR", help="data folder (overrides the plan's)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/experiments/<plan>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("demo", help="upscale a sample photo shipped by scikit-image",
                       description="Write scikit-image's 'chelsea' photo (300x451) to "
                       "OUT_DIR/input.png and upscale it 4x with realesrgan-x4plus.")
    p.add_argument("-o", "--output", default="demo-output", metavar="OUT_DIR")
    _add_inference_options(p)
    p.set_defaults(func=cmd_demo)
    return parser


def _collect_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    from upres.images import list_images

    files, errors = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_images(path)
            if not found:
                errors.append(f"{path}: folder holds no images")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            errors.append(f"{path}: no such file or folder")
    return files, errors


def cmd_upscale(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from upres.images import ImageError
    from upres.inference import Upscaler

    files, errors = _collect_inputs(args.inputs)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    out_dir = Path(args.output)
    upscaler = Upscaler(args.model, alpha=args.alpha, outscale=args.outscale,
                        **_inference_kwargs(args))
    inputs_resolved = {f.resolve() for f in files}
    written: set[Path] = set()
    failed = len(errors)
    bar = tqdm(files, desc="images", unit="img", disable=None)
    for src in bar:
        dst = out_dir / f"{src.stem}{args.suffix}.{args.ext}"
        if dst.resolve() in inputs_resolved:
            tqdm.write(f"error: {src}: output {dst} would overwrite an input; "
                       "choose another -o or --suffix", file=sys.stderr)
            failed += 1
            continue
        if dst.resolve() in written:
            tqdm.write(f"error: {src}: output {dst} was already written for another input "
                       "with the same name", file=sys.stderr)
            failed += 1
            continue
        tiles_bar = None

        def progress(done: int, total: int, src=src) -> None:
            nonlocal tiles_bar
            if total > 1 and tiles_bar is None:
                tiles_bar = tqdm(total=total, desc=f"  tiles {src.name}", leave=False,
                                 disable=None)
            if tiles_bar is not None:
                tiles_bar.n = done
                tiles_bar.refresh()
        try:
            upscaler.upscale_file(src, dst, progress)
            written.add(dst.resolve())
        except ImageError as err:
            tqdm.write(f"error: {err}", file=sys.stderr)
            failed += 1
        finally:
            if tiles_bar is not None:
                tiles_bar.close()
    bar.close()
    print(f"wrote {len(written)} image(s) to {out_dir}" + (f"; {failed} failed" if failed else ""))
    return EXIT_ERROR if failed else 0


def cmd_convert(args: argparse.Namespace) -> int:
    from upres.weights import convert

    weights = convert(args.src, args.dst)
    print(f"wrote {args.dst} ({weights.arch} {weights.hparams})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from upres.config import load_config, resolve_config_path
    from upres.train import TrainingError, TrainingInterrupted, train

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.root={args.data}")
    cfg = load_config(args.config, overrides)
    run_dir = Path(args.run_dir or Path("runs") / resolve_config_path(args.config).stem)
    try:
        result = train(cfg, run_dir, args.resume, command=["upres", *sys.argv[1:]],
                       progress=not args.quiet)
    except TrainingInterrupted as err:
        print(f"error: {err}", file=sys.stderr)
        return 130
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    if result.best_psnr > -float("inf"):
        print(f"best val PSNR {result.best_psnr:.3f} dB; weights: {run_dir / 'best.safetensors'}")
    print(f"finished step {result.step}; last weights: {run_dir / 'last.safetensors'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from upres.evaluate import evaluate_folders, mean_score, write_scores_csv

    scores = evaluate_folders(args.pred, args.gt, args.lr, args.crop_border, args.y)
    mean = mean_score(scores)
    label = "PSNR-Y" if args.y else "PSNR"
    line = f"{len(scores)} images: mean {label} {mean.psnr:.4f} dB, SSIM {mean.ssim:.4f}"
    if mean.bicubic_psnr is not None:
        line += f" (bicubic {mean.bicubic_psnr:.4f} dB, SSIM {mean.bicubic_ssim:.4f})"
    if args.csv:
        write_scores_csv(scores, args.csv)
        line += f"; per-image scores in {args.csv}"
    print(line)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from upres.ensemble import predict
    from upres.inference import InferenceOptions

    result = predict(args.model, args.input, args.output, args.weights, args.val, args.zip,
                     InferenceOptions(**_inference_kwargs(args)), report_dir=args.report)
    print(f"wrote {len(result.files)} image(s) to {result.output}")
    if len(args.model) > 1:
        print("weights: " + ", ".join(f"{m}={w:.4f}" for m, w in zip(args.model, result.weights)))
    if result.val:
        for name, value in result.val["models"].items():
            print(f"val PSNR {name}: {value:.4f} dB")
        print(f"val PSNR ensemble: {result.val['ensemble']:.4f} dB")
    if result.zip_path:
        print(f"wrote {result.zip_path}")
    if args.report:
        print(f"report: {Path(args.report) / 'index.html'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from upres.report import build_report

    preds = {}
    for item in args.pred:
        name, sep, folder = item.partition("=")
        if not sep:
            name, folder = Path(item).name, item
        preds[name] = Path(folder)
    index = build_report(args.gt, args.lr, preds, args.output, args.crop_border, args.y)
    print(f"report: {index}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from upres.config import resolve_config_path
    from upres.experiment import load_plan, run_plan

    plan = load_plan(args.plan)
    out = Path(args.out or Path("runs") / "experiments" / resolve_config_path(args.plan).stem)
    written = run_plan(plan, out, args.data, progress=not args.quiet)
    print((out / "table.md").read_text(), end="")
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from skimage import data
    except ImportError:
        raise CliError("the demo photo comes from scikit-image: pip install 'upres[demo]'") from None
    from upres.images import write_image
    from upres.inference import Upscaler

    out_dir = Path(args.output)
    src, dst = out_dir / "input.png", out_dir / "upscaled_x4.png"
    write_image(src, data.chelsea())
    upscaler = Upscaler("realesrgan-x4plus", **_inference_kwargs(args))
    print(f"upscaling {src} with realesrgan-x4plus on {upscaler.device} "
          f"({str(upscaler.dtype).replace('torch.', '')}) ...")
    upscaler.upscale_file(src, dst)
    print(f"wrote {dst.resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from upres.config import ConfigError
    from upres.data import DataError
    from upres.ensemble import PredictError
    from upres.evaluate import EvalError
    from upres.images import ImageError
    from upres.weights import WeightsError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # ``train`` overrides may come after options: key=value words
        if args.command != "train" or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    try:
        return args.func(args)
    except (CliError, ConfigError, DataError, EvalError, PredictError, WeightsError, ImageError,
            ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
