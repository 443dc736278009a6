"""Commands that train: ``train``, ``lr-find``, ``experiment`` and ``config``; each parser
beside its handler."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from upres.cli.common import add_overwrite, add_quiet, number
from upres.errors import UpresError


def add_train(sub) -> None:
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
    add_overwrite(p, "the files of an earlier run in the run folder")
    add_quiet(p)
    p.set_defaults(func=cmd_train)


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


def add_lr_find(sub) -> None:
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
    p.add_argument("--steps", type=number(int, 5, 10000), default=60, help="steps (default 60)")
    p.add_argument("--low", type=number(float, 0, low_open=True), default=1e-6,
                   help="first rate (default 1e-6)")
    p.add_argument("--high", type=number(float, 0, low_open=True), default=1e-2,
                   help="last rate (default 1e-2)")
    add_overwrite(p, "an earlier range test in OUT")
    add_quiet(p)
    p.set_defaults(func=cmd_lr_find)


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


def add_experiment(sub) -> None:
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
    add_overwrite(p, "an experiment in OUT (its arms and results)")
    add_quiet(p)
    p.set_defaults(func=cmd_experiment)


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


def add_config(sub) -> None:
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
    add_overwrite(q, "FILE if it")
    q.set_defaults(func=cmd_config_schema)


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
