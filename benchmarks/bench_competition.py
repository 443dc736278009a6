"""The competition-cpu benchmark: ``upres auto`` against the manual recipe (``finetune-cpu``,
trained for the same wall time less its prediction time, then predicted) on competition-style
sets, at several budgets; test PSNR overall and per LR recipe (where the set records them),
beside bicubic. Run it alone: two processes on these 2 cores slow each other down.

    python benchmarks/bench_competition.py SET [SET ...] --budgets 15m,30m,60m --out DIR

Methods: ``manual``; ``auto`` (every installed named start, as a user gets it: with the published
PSNR-trained models pulled, those too); ``auto-gan`` (the GAN-trained pretrained starts only, as
``auto`` was before the published models).

SET is a folder with train/{lr,hr} and test/{lr,hr} (``upres make-set`` builds such sets, with
recipes.json). Every run's folder is kept under DIR; ``DIR/results.json`` collects the figures,
``DIR/table.md`` prints them, and each run appends its record to
``benchmarks/results/competition-cpu.jsonl``. A run already in results.json is not run again."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import records
from upres.degradation.recipes import read_labels
from upres.io import images
from upres.io.pretrained import PRETRAINED
from upres.scoring import metrics
from upres.training.config import duration_seconds

UPRES = [sys.executable, "-m", "upres.cli"]


def score(pred_dir: Path, data: Path) -> dict:
    """Mean test PSNR (border 4, RGB) overall and per recipe, and bicubic's."""
    labels = read_labels(data, "test") or {}
    by: dict[str, list[tuple[float, float]]] = {}
    for hr_path in images.list_images(data / "test" / "hr"):
        hr = images.read_image(hr_path)
        lr = images.read_image(data / "test" / "lr" / hr_path.name)
        ours = metrics.psnr(images.read_image(pred_dir / f"{hr_path.stem}.png"), hr, 4)
        bic = metrics.psnr(metrics.bicubic_upscale(lr, 4), hr, 4)
        for key in ("all", labels.get(hr_path.stem)):
            if key:
                by.setdefault(key, []).append((ours, bic))
    return {k: {"psnr": float(np.mean([o for o, _ in v])), "bicubic": float(np.mean([b for _, b in v])),
                "images": len(v)} for k, v in by.items()}


def run_auto(data: Path, budget: str, folder: Path, starts: tuple[str, ...] = ()) -> dict:
    """``upres auto`` with every installed named start (the default), or only ``starts``."""
    start = time.monotonic()
    pick = ["--pretrained", ",".join(starts)] if starts else []
    subprocess.run([*UPRES, "auto", str(data), "--budget", budget, "--out", str(folder), "--quiet", *pick],
                   check=True)
    wall = time.monotonic() - start
    record = json.loads((folder / "auto.json").read_text())
    phases = record["phases"]
    return {"wall": wall, "scores": score(folder / "submission", data),
            "winner": phases.get("halving", {}).get("winner"),
            "starts": [c["name"] for c in phases["candidates"]["candidates"]],
            "unused_min": round((record.get("unused") or {}).get("seconds", 0) / 60, 1),
            "zero_shot": (phases["end"].get("zero_shot") or {}).get("keep", False),
            "levers": {k: (v.get("transforms") or True) if v.get("keep") else False
                       for k, v in phases.get("levers", {}).items() if isinstance(v, dict) and "keep" in v},
            "refine": phases["end"]["refine"].get("keep")}


def prediction_seconds(data: Path) -> float:
    """The test set's prediction time by x4plus as ``upres predict`` runs it by default (OpenVINO
    bf16 on a CPU with AMX), from timing its first image here after a warm-up; the conversion of
    the trained model is in the 30 s margin."""
    from upres.inference.upscaler import Upscaler

    tests = images.list_images(data / "test" / "lr")
    first = images.read_image(tests[0])
    up = Upscaler("realesrgan-x4plus", tile=0)
    up.upscale_array(first)
    start = time.perf_counter()
    up.upscale_array(first)
    per_pixel = (time.perf_counter() - start) / (first.shape[0] * first.shape[1])
    return per_pixel * sum(np.prod(images.header_size(p)) for p in tests)


def run_manual(data: Path, budget: str, folder: Path) -> dict:
    """finetune-cpu for the budget less the test set's prediction time (timed first)."""
    start = time.monotonic()
    train_s = duration_seconds(budget) - prediction_seconds(data) - 30
    subprocess.run([*UPRES, "train", "finetune-cpu", "--data", str(data), "--run-dir",
                    str(folder / "train"), "--quiet", "train.iterations=1000000",
                    f"train.time_budget={max(train_s, 60):.0f}s"], check=True)
    subprocess.run([*UPRES, "predict", "--model", str(folder / "train" / "best.safetensors"),
                    "--input", str(data / "test" / "lr"), "--output", str(folder / "submission"),
                    "--quiet"], check=True)
    return {"wall": time.monotonic() - start, "scores": score(folder / "submission", data)}


def table(results: dict) -> str:
    rows = ["| set | budget | method | wall (min) | test PSNR | vs bicubic | per recipe (dB over bicubic) |",
            "|---|---|---|---|---|---|---|"]
    for key, r in sorted(results.items()):
        data, budget, method = key.split("|")
        s = r["scores"]
        recipes = ", ".join(f"{k} {v['psnr'] - v['bicubic']:+.2f}" for k, v in sorted(s.items())
                            if k != "all")
        rows.append(f"| {Path(data).name} | {budget} | {method} | {r['wall'] / 60:.1f} | "
                    f"{s['all']['psnr']:.3f} | {s['all']['psnr'] - s['all']['bicubic']:+.3f} | {recipes} |")
    return "\n".join(rows) + "\n"


def figures(result: dict) -> dict:
    """A run's figures as its record holds them (what the docs' tables show)."""
    s = result["scores"]
    out = {"wall_min": round(result["wall"] / 60, 1), "test_psnr": round(s["all"]["psnr"], 3),
           "vs_bicubic": round(s["all"]["psnr"] - s["all"]["bicubic"], 3),
           "vs_bicubic_by_recipe": {k: round(v["psnr"] - v["bicubic"], 2) for k, v in sorted(s.items())
                                    if k != "all"}}
    return {**out, **{k: result[k] for k in ("winner", "levers", "refine", "starts", "unused_min",
                                             "zero_shot") if k in result}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", type=Path)
    parser.add_argument("--budgets", default="15m,30m,60m")
    parser.add_argument("--methods", default="manual,auto",
                        help="manual, auto (every installed named start: the GAN-trained pretrained "
                             "ones and the published PSNR ones pulled), auto-gan (the GAN-trained only)")
    parser.add_argument("--out", type=Path, default=Path("bench-competition"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for data in args.sets:
        for budget in args.budgets.split(","):
            for method in args.methods.split(","):
                key = f"{data.resolve()}|{budget}|{method}"
                if key in results:
                    continue
                folder = args.out / f"{data.name}-{budget}-{method}"
                results[key] = (run_auto(data.resolve(), budget, folder) if method == "auto" else
                                run_auto(data.resolve(), budget, folder, tuple(PRETRAINED))
                                if method == "auto-gan" else run_manual(data.resolve(), budget, folder))
                path.write_text(json.dumps(results, indent=1))
                records.append("competition-cpu", {"set": data.name, "budget": budget, "method": method},
                               figures(results[key]))
                print(table({key: results[key]}).splitlines()[-1], flush=True)
    (args.out / "table.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
