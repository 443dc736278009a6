"""Commands for a competition folder: ``auto``, ``predict``, ``eval``, ``report``,
``fingerprint`` and ``make-set``; each parser beside its handler."""

from __future__ import annotations

import argparse
from pathlib import Path

from upres.cli.common import (
    add_inference_options,
    add_overwrite,
    add_quiet,
    add_scoring_options,
    inference_kwargs,
    note,
    number,
)
from upres.errors import UpresError
from upres.io.pretrained import PRETRAINED


def add_auto(sub) -> None:
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
    p.add_argument("--pretrained", default="installed", metavar="NAMES",
                   help=f"named starts, comma-separated: pretrained ({', '.join(PRETRAINED)}) and "
                   "published PSNR-trained models (upres models lists them); installed (the "
                   "default: every one installed) or none")
    p.add_argument("--presets", default="auto", metavar="auto|none|NAMES",
                   help="published presets to train from scratch where the budget gives them "
                   "enough steps: auto (every one, on an accelerator only), none, or names "
                   "(on any device; `upres models` lists them)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the training")
    p.add_argument("--cache-dir", metavar="DIR", help="decoded-image cache (as data.cache_dir)")
    add_quiet(p)
    p.set_defaults(func=cmd_auto)


def cmd_auto(args: argparse.Namespace) -> int:
    from upres.auto import AutoOptions, run_auto
    from upres.auto.journal import installed_starts
    from upres.training.config import duration_seconds

    names = [n for n in args.pretrained.split(",") if n]
    pretrained = (() if names == ["none"] else installed_starts() if names == ["installed"]
                  else tuple(names))
    options = AutoOptions(duration_seconds(args.budget), args.device, args.seed, pretrained,
                          tuple(args.candidate), args.presets, args.cache_dir, not args.quiet)
    out = Path(args.out or Path("runs") / f"auto-{Path(args.data).resolve().name}")
    result = run_auto(args.data, out, options, args.resume, say=note)
    end = result.record["phases"]["end"]
    print(f"validation PSNR {end['val_psnr']:.3f} dB (bicubic {end['bicubic_psnr']:.3f}); "
          f"decisions: {out / 'report.html'}")
    if end["models"] == ["bicubic"]:
        print("the submission is bicubic: nothing beat it on validation in this budget (the "
              "decisions page says why)")
    print(f"wrote {result.submission} and {result.submission}.zip")
    return 0


def add_predict(sub) -> None:
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
    add_overwrite(p, "the output folder, its .ensemble.json, .zip and report")
    p.add_argument("--refine", metavar="FINGERPRINT",
                   help="LR-consistency refinement (back-projection) with the kernels of a "
                   "fingerprint.json, for the groups where it raises the --val PSNR")
    add_quiet(p)
    add_inference_options(p)
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    if not args.model and not args.experts:
        raise UpresError("give --model (repeat for an ensemble) or --experts FILE")
    from upres.inference.shard import current_shard
    from upres.inference.submission import predict_folder
    from upres.inference.upscaler import InferenceOptions

    shard = current_shard(args.device)
    options = InferenceOptions(**inference_kwargs(args, [args.input], args.val) | {"device": shard.device})
    result = predict_folder(args.model, args.input, args.output, args.weights, args.val, args.zip,
                     options, progress=not args.quiet, report_dir=args.report, shard=shard,
                     on_note=note if shard.main and not args.quiet else None, refine=args.refine,
                     experts=args.experts, route=args.route,
                     on_plan=note if args.verbose and shard.main else None,
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


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="score predictions against ground truth (PSNR, SSIM)",
                       description="PSNR and SSIM as BasicSR computes them (uint8, crop border, "
                       "RGB or BT.601 Y). With --lr, bicubic upsampling of the LR is scored beside "
                       "every image. Files are matched by name; mismatches are errors.")
    p.add_argument("--pred", required=True, metavar="DIR", help="predicted (upscaled) images")
    p.add_argument("--gt", required=True, metavar="DIR", help="ground-truth HR images, same names")
    p.add_argument("--lr", metavar="DIR", help="LR inputs, to score bicubic beside")
    add_scoring_options(p)
    p.add_argument("--csv", metavar="FILE", help="write per-image scores and the mean")
    add_overwrite(p, "the CSV file")
    p.set_defaults(func=cmd_eval)


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


def add_report(sub) -> None:
    p = sub.add_parser("report", help="HTML report comparing prediction folders",
                       description="Per-image PSNR/SSIM table (bicubic and each prediction folder) "
                       "and zoomed crops (bicubic | predictions | ground truth), offline HTML.")
    p.add_argument("--pred", action="append", required=True, metavar="[NAME=]DIR",
                   help="prediction folder; repeatable")
    p.add_argument("--gt", required=True, metavar="DIR", help="ground-truth HR images")
    p.add_argument("--lr", required=True, metavar="DIR", help="LR inputs (for bicubic)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="report folder (new)")
    add_scoring_options(p)
    add_overwrite(p, "a report folder")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from upres.scoring.report import build_report

    preds = {}
    for item in args.pred:
        name, sep, folder = item.partition("=")
        if not sep:
            name, folder = Path(item).name, item
        if name in preds:
            raise UpresError(f"--pred: two columns would be named {name!r} ({preds[name]} and "
                             f"{folder}); name them: --pred NAME=DIR")
        preds[name] = Path(folder)
    from upres.io.files import staged_folder

    with staged_folder(args.output, args.overwrite) as staging:
        build_report(args.gt, args.lr, preds, staging, args.crop_border, args.y)
    print(f"report: {Path(args.output) / 'index.html'}")
    return 0


def add_fingerprint(sub) -> None:
    p = sub.add_parser("fingerprint", help="find how the LR images were made (recipe groups)",
                       description="Fit each training pair's downscaling kernel and residual "
                       "statistics, group the pairs into recipes, train a blind LR-only classifier "
                       "and write OUT/fingerprint.json and OUT/fingerprint.html. With --lr: label "
                       "LR-only images with a fingerprint's classifier (OUT/labels.json).")
    p.add_argument("data", nargs="?", metavar="DATA",
                   help="competition folder (train/lr, train/hr) or a folder with lr/ and hr/")
    p.add_argument("--out", metavar="DIR", help="output folder (default: DATA/fingerprint)")
    p.add_argument("--scale", type=number(int, 1, 8), default=4, help="upscaling factor (default 4)")
    p.add_argument("--lr", metavar="DIR", help="label these LR-only images instead")
    p.add_argument("--fingerprint", metavar="FILE",
                   help="with --lr: the fingerprint.json to use (default: DATA/fingerprint/...)")
    p.add_argument("--cache-dir", metavar="DIR", help="decoded-image cache (as data.cache_dir)")
    add_overwrite(p, "an earlier fingerprint folder (or labels.json)")
    add_quiet(p)
    p.set_defaults(func=cmd_fingerprint)


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


def add_make_set(sub) -> None:
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
    p.add_argument("--test-fraction", type=number(float, 0, 1), default=0.25,
                   help="share of HR images held out for test/ (default 0.25)")
    p.add_argument("--scale", type=number(int, 1, 8), default=4, help="downscaling factor (default 4)")
    p.add_argument("--seed", type=int, default=0, help="split and noise seed (default 0)")
    add_overwrite(p, "an OUT folder that")
    p.set_defaults(func=cmd_make_set)


def cmd_make_set(args: argparse.Namespace) -> int:
    from upres.degradation.recipes import make_set

    record = make_set(args.hr_dir, args.out, [r for r in args.recipes.split(",") if r.strip()],
                      args.scale, args.test_fraction, args.seed, args.overwrite)
    print(f"{len(record['train'])} training and {len(record['test'])} test pairs, recipes: "
          + ", ".join(record["recipes"]))
    print(f"wrote {Path(args.out) / 'recipes.json'}")
    return 0
