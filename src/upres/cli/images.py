"""Commands on images and weights: ``upscale``, ``convert``, ``demo`` and ``models``; each
parser beside its handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from upres.cli.common import (
    EXIT_ERROR,
    add_inference_options,
    add_overwrite,
    add_quiet,
    error,
    inference_kwargs,
    note,
    number,
)
from upres.errors import UpresError
from upres.io.pretrained import PRETRAINED


def add_upscale(sub) -> None:
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
                   help="a model name (pretrained: realesrgan-x4plus, realesrgan-x4plus-anime, "
                   "realsr-df2k; published PSNR-trained ones once pulled, e.g. craft-x4; upres "
                   "models lists them) or a .safetensors / .pth / ncnn .param path (default: "
                   "realesrgan-x4plus, trained for looks: for PSNR, a published PSNR model or a "
                   "fine-tune)")
    p.add_argument("--ext", choices=("auto", "png", "webp", "jpg"), default="png",
                   help="output format; auto keeps each input's (default: png; 16-bit needs png)")
    p.add_argument("--suffix", default="", help="text added to each output file's stem")
    p.add_argument("--alpha", choices=("bicubic", "model"), default="bicubic",
                   help="how to upscale an alpha channel (default: bicubic)")
    p.add_argument("-s", "--outscale", type=number(float, 0, 16, low_open=True), default=None,
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
    add_quiet(p)
    add_inference_options(p)
    p.set_defaults(func=cmd_upscale)


def cmd_upscale(args: argparse.Namespace) -> int:
    from upres.inference.shard import current_shard
    from upres.inference.upscaler import Upscaler, check_suffix, upscale_files

    inputs = [*args.inputs, *args.more_inputs]
    if not inputs:
        raise UpresError("give the images to upscale: files or folders (INPUT ... or -i INPUT)")
    check_suffix(args.suffix)  # refused before the model loads
    shard = current_shard(args.device)
    kwargs = inference_kwargs(args, inputs) | {"device": shard.device}
    upscaler = Upscaler(args.model, alpha=args.alpha, outscale=args.outscale, **kwargs)
    if shard.main and not args.quiet:
        note("; ".join(upscaler.notes))
    result = upscale_files(upscaler, inputs, args.output, args.ext, args.suffix,
                           progress=not args.quiet, on_error=error, existing=args.existing,
                           shard=shard, on_note=note if args.verbose else None)
    counts = [sum(c) for c in zip(*shard.gather((len(result.written), len(result.skipped),
                                                 len(result.errors))))]
    if shard.main:
        failed = f"; {counts[2]} failed" if counts[2] else ""
        kept = f"; kept {counts[1]} existing" if counts[1] else ""
        print(f"wrote {counts[0]} image(s){kept}{failed} to {args.output}")
    return EXIT_ERROR if counts[2] else 0


def add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert weights between formats",
                       description="Convert weights: SRC is a pretrained name, a .pth, a "
                       ".safetensors or an ncnn .param; DST's extension (.safetensors, .pth or "
                       ".onnx) chooses the format. .pth output is BasicSR-style "
                       "{'params_ema': ...}; .onnx has dynamic batch/height/width and needs "
                       "pip install 'upres[onnx]'.")
    p.add_argument("src", metavar="SRC", help="pretrained name or weights file")
    p.add_argument("dst", metavar="DST", help="destination: .safetensors, .pth or .onnx")
    add_overwrite(p, "DST if it")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    from upres.io.loading import convert

    weights = convert(args.src, args.dst, args.overwrite)
    print(f"{weights.arch} {weights.hparams}: wrote {args.dst}")
    return 0


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="upscale a sample photo shipped by scikit-image",
                       description="Write scikit-image's 'chelsea' photo (300x451) to "
                       "OUT_DIR/input.png and upscale it 4x with realesrgan-x4plus.")
    p.add_argument("-o", "--output", default="demo-output", metavar="OUT_DIR",
                   help="output folder (default: demo-output)")
    add_quiet(p)
    add_inference_options(p)
    p.set_defaults(func=cmd_demo)


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
    upscaler = Upscaler("realesrgan-x4plus", **inference_kwargs(args))
    write_image(src, data.chelsea())
    if not args.quiet:
        print(f"upscaling {src} with realesrgan-x4plus on {upscaler.device}: "
              f"{'; '.join(upscaler.notes)} ...")
    if args.verbose:
        upscaler.engine.on_plan = lambda plan: note(f"{src.name}: {plan}")
    upscaler.upscale_file(src, dst, overwrite=True)
    from upres.scoring.report import before_after_page

    page = before_after_page(src, dst, out_dir / "index.html", model="realesrgan-x4plus")
    print(f"before/after page: {page.resolve()}")
    print(f"wrote {dst.resolve()}")
    return 0


def add_models(sub) -> None:
    p = sub.add_parser("models", help="the models available by name; pull or add published weights",
                       description="Without an action: the pretrained names, the published "
                       "PSNR-trained models (installed or not), the presets upres trains and the "
                       "conversions in the cache. pull NAME downloads a published model into the "
                       "cache, kept only if its sha256 is the published one; add FILE installs a "
                       "local copy after the same check (offline machines). Nothing is downloaded "
                       "unless asked. Examples: upres models; upres models pull craft-x4")
    p.set_defaults(func=cmd_models)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    q = actions.add_parser("pull", help="download a published model by name (sha256-checked)",
                           description="Download NAME from its published address into the cache "
                           "(a progress bar), checked against its size and sha256; a mismatch is "
                           "an error and nothing is kept.")
    q.add_argument("name", metavar="NAME", help="a published name (upres models lists them)")
    add_quiet(q)
    q.set_defaults(func=cmd_models_pull)
    q = actions.add_parser("add", help="install a local copy of a published model (sha256-checked)",
                           description="Install FILE as the published model whose sha256 it has.")
    q.add_argument("file", metavar="FILE", help="a copy of a published model's file")
    q.add_argument("--name", help="the published name FILE must be (default: found by its sha256)")
    add_quiet(q)
    q.set_defaults(func=cmd_models_add)


def cmd_models(args: argparse.Namespace) -> int:
    from upres.io.files import cache_dir
    from upres.io.pretrained import PURPOSE, pretrained_available
    from upres.io.published import PUBLISHED, how_to_get, installed_path
    from upres.models import registry

    print("pretrained (upscale -n NAME; init.source: NAME):")
    for name in PRETRAINED:
        state = ("installed" if pretrained_available(name)
                 else "not installed: pip install 'upres[pretrained]'")
        print(f"  {name:26s} {PURPOSE[name]} ({state})")
    print("published PSNR-trained models (upscale -n NAME; init.source: NAME):")
    for name, entry in PUBLISHED.items():
        state = "installed" if installed_path(name) else f"not installed: {how_to_get(name)}"
        print(f"  {name:26s} {entry.family}, {entry.params / 1e6:.2f}M parameters, trained for "
              f"{entry.purpose}, {entry.license} ({state})")
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


def cmd_models_pull(args: argparse.Namespace) -> int:
    from upres.io.published import pull

    path = pull(args.name, progress=not args.quiet)
    print(f"installed {args.name}: {path}")
    return 0


def cmd_models_add(args: argparse.Namespace) -> int:
    from upres.io.published import add, folder

    name = add(args.file, args.name)
    print(f"installed {name}: {folder() / (name + '.pth')}")
    return 0
