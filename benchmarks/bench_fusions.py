"""How fusions of an ``upres auto`` run's arms score on a set's test pairs, per recipe, beside
what ``auto`` could see of them on its validation pairs: each arm alone; the winner and the
runner-up with the pooled fit (auto's ensemble), with weights per fingerprint group fitted as
auto fits them (each validation pair's own label), and fitted for the blind classifier's
held-out confusion (a label's weights fitted on the true groups it is given to, as often as it
is); every arm together, pooled and per group; and weights per recipe fitted on the test pairs
themselves (a ceiling no submission can reach). No self-ensemble, no refinement; fp32, whole
images. Validation is shown in-sample and leave-one-pair-out (each pair scored with weights
fitted on the others).

    python benchmarks/bench_fusions.py RUN SET

RUN is an ``upres auto`` output folder (``auto.json``, ``arms/*/best.safetensors``,
``fingerprint/``), SET the ``upres make-set`` folder it ran on (``recipes.json`` names each
test image's recipe)."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

import records
from upres.degradation.fingerprint import Fingerprint
from upres.degradation.recipes import read_labels
from upres.degradation.refine import Refiner
from upres.inference.ensemble import (
    GroupWeights,
    Predictor,
    Validation,
    coefficients_for,
    fit_coefficients,
    fit_group_weights,
    fuse,
    to_image,
)
from upres.inference.upscaler import InferenceOptions
from upres.scoring import metrics
from upres.scoring.evaluate import match_by_stem


def run_arms(journal: dict) -> list[str]:
    """Every arm that trained in halving: the winner, the runner-up, then the others."""
    halving = journal["halving"]
    seen = [name for r in halving["rounds"] for name in r["psnr"]]
    first = [halving["winner"]] + ([halving["runner_up"]] if halving.get("runner_up") else [])
    return first + [name for name in dict.fromkeys(seen) if name not in first]


def validation_files(run: Path, data: Path, journal: dict) -> list[dict[str, Path]]:
    """The validation pairs auto used (its crops where it cropped them), in its order."""
    if journal["split"].get("crop"):
        lrs = sorted((run / "val" / "lr").glob("*.png"))
        return [{"lr": p, "hr": run / "val" / "hr" / p.name} for p in lrs]
    files = []
    for name in journal["split"]["val"][:journal["candidates"]["val_used"]]:
        lr = next((data / "train" / "lr").glob(f"{name}.*"), None)
        if lr is None:
            raise SystemExit(f"{data / 'train' / 'lr'}: no LR image {name}.* (auto.json's validation pair)")
        files.append({"lr": lr, "hr": data / "train" / "hr" / lr.name})
    return files


def confusion_weights(val: Validation, truth: list[int], held: list, pooled: np.ndarray) -> dict:
    """Per label, the fit over the validation pairs of the true groups the classifier's
    held-out labels give it, each weighted by how often, shrunk halfway to ``pooled``."""
    by_label = {}
    for label in {g for _, g, _ in held}:
        counts = Counter(t for t, g, _ in held if g == label)
        share = {t: c / sum(counts.values()) / truth.count(t) for t, c in counts.items() if t in truth}
        ks = [k for k, t in enumerate(truth) if t in share]
        if ks:
            fit = fit_coefficients([val.preds[k] * np.sqrt(share[truth[k]]) for k in ks],
                                   [val.targets[k] * np.sqrt(share[truth[k]]) for k in ks])
            by_label[label] = (fit + pooled) / 2
    return by_label


def subset(val: Validation, idx: list[int]) -> Validation:
    return Validation(val.files, [p[idx] for p in val.preds], val.targets, val.hr, val.border,
                      [val.psnr[i] for i in idx], val.lr_rgb)


def leave_one_out(val: Validation) -> float:
    """Mean PSNR of each pair fused with the pooled fit on the other pairs."""
    scores = []
    for k in range(len(val.preds)):
        rest = [j for j in range(len(val.preds)) if j != k]
        w = fit_coefficients([val.preds[j] for j in rest], [val.targets[j] for j in rest])
        scores.append(metrics.psnr(to_image(fuse(list(val.preds[k]), w), val.hr[k]), val.hr[k], val.border))
    return float(np.mean(scores))


def fusions(val: Validation, test: Validation, truth: list[int], fp: Fingerprint,
            recipes: list[str], names: list[str]) -> dict[str, tuple[list[int], object]]:
    """Name -> (the arms fused, their coefficients: an array, a ``GroupWeights``, or for the
    ceiling a function of the test image's index)."""
    label = Refiner(fp).label
    out: dict[str, tuple[list[int], object]] = {f"{n} alone": ([i], np.ones(1)) for i, n in enumerate(names)}
    groups = [("winner + runner-up", [0, 1])] if len(names) > 1 else []
    if len(names) > 2:
        groups.append(("every arm", list(range(len(names)))))
    for what, idx in groups:
        sub, tsub = subset(val, idx), subset(test, idx)
        pooled = fit_coefficients(sub.preds, sub.targets)
        held = confusion_weights(sub, truth, (fp.classifier or {}).get("held_out", []), pooled)
        out[f"{what}, pooled"] = (idx, pooled)
        out[f"{what}, per group (own labels)"] = (idx, fit_group_weights(sub, label, pooled))
        out[f"{what}, per group (held-out confusion)"] = (idx, GroupWeights(pooled, held, label))
        ceiling = {r: fit_coefficients([tsub.preds[k] for k in range(len(recipes)) if recipes[k] == r],
                                       [tsub.targets[k] for k in range(len(recipes)) if recipes[k] == r])
                   for r in set(recipes)}
        out[f"{what}, per recipe fitted on test (ceiling)"] = (idx, lambda k, c=ceiling: c[recipes[k]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("set", type=Path)
    args = parser.parse_args()
    journal = json.loads((args.run / "auto.json").read_text())["phases"]
    names = run_arms(journal)
    fp = Fingerprint.load(args.run / "fingerprint" / "fingerprint.json")
    truth_of = read_labels(args.set, "test")
    predictor = Predictor([args.run / "arms" / n / "best.safetensors" for n in names],
                          InferenceOptions(tile=0, dtype="fp32", device="cpu"), names)
    began = time.perf_counter()
    val = predict(predictor, validation_files(args.run, args.set, journal), "validation")
    test = predict(predictor, match_by_stem({"lr": args.set / "test" / "lr", "hr": args.set / "test" / "hr"}),
                   "test")
    print(f"{len(names)} arms on {len(val.files)} validation and {len(test.files)} test pairs: "
          f"{time.perf_counter() - began:.0f} s")
    recipes = [truth_of[f["lr"].stem] for f in test.files]
    group_of = journal["fingerprint"]["group_of"]
    truth = [group_of[name] for name in journal["split"]["val"][:len(val.files)]]
    print("| fusion | validation (in-sample / leave-one-out) | test | "
          + " | ".join(sorted(set(recipes))) + " |")
    print("|---|---|---|" + "---|" * len(set(recipes)))
    for what, (idx, coefficients) in fusions(val, test, truth, fp, recipes, names).items():
        row = score(subset(test, idx), coefficients, recipes)
        sub = subset(val, idx)
        seen = "-" if callable(coefficients) and not isinstance(coefficients, GroupWeights) \
            else f"{sub.fused_psnr(coefficients):.3f}"
        if isinstance(coefficients, np.ndarray):
            seen += f" / {leave_one_out(sub):.3f}"
        print(f"| {what} | {seen} | **{np.mean(row['all']):.3f}** | "
              + " | ".join(f"{np.mean(row[r]):.3f}" for r in sorted(set(recipes))) + " |")
        records.append("fusions", {"run": args.run.name, "set": args.set.name, "fusion": what}, {
            "validation": seen, "test_psnr": round(float(np.mean(row["all"])), 3),
            "test_psnr_by_recipe": {r: round(float(np.mean(row[r])), 3) for r in sorted(set(recipes))}})


def predict(predictor: Predictor, files: list[dict], what: str) -> Validation:
    """Every arm on every pair, one pair at a time with a progress bar (minutes on a CPU)."""
    parts = [predictor.validate_files([f], 4) for f in tqdm(files, desc=f"{what} pairs", unit="pair")]
    return Validation(files, [p.preds[0] for p in parts], [p.targets[0] for p in parts],
                      [p.hr[0] for p in parts], 4,
                      [float(np.mean([p.psnr[i] for p in parts])) for i in range(len(predictor.names))],
                      [p.lrs[0] for p in parts])


def score(test: Validation, coefficients, recipes: list[str]) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {"all": []}
    for k, (hr, preds) in enumerate(zip(test.hr, test.preds)):
        w = coefficients(k) if callable(coefficients) and not isinstance(coefficients, GroupWeights) \
            else coefficients_for(coefficients, test.lrs[k])
        psnr = metrics.psnr(to_image(fuse(list(preds), w), hr), hr, test.border)
        rows["all"].append(psnr)
        rows.setdefault(recipes[k], []).append(psnr)
    return rows


if __name__ == "__main__":
    main()
