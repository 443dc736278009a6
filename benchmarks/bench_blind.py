"""Blind recipe accuracy on held-out LR-only images of a set with known recipes: fingerprint
SET/train, label SET/test/lr with its classifier, and count an image right when its group's
majority training recipe is the image's true recipe (SET/recipes.json). Prints the grouping's
purity, the classifier's cross-validated accuracy, the held-out accuracy per recipe and chance
(the largest recipe's share of the test images), all measured in the same run.

    python benchmarks/bench_blind.py SET [--out DIR]

SET comes from ``upres make-set`` (e.g. ``upres make-set ../shared/data/benchmarks/BSD68 known6
--recipes bicubic,bilinear,area,lanczos,blur1.2,jpeg75 --test-fraction 0.15``)."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import records
from upres.degradation.folders import fingerprint_data, label_lr
from upres.degradation.recipes import read_labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", type=Path)
    parser.add_argument("--out", type=Path, help="fingerprint folder (default: a temporary one)")
    args = parser.parse_args()
    truth = read_labels(args.set, "test")
    if not truth:
        raise SystemExit(f"{args.set}/recipes.json: no test recipes (build the set with make-set)")
    out = args.out or Path(tempfile.mkdtemp()) / "fingerprint"
    began = time.perf_counter()
    fp = fingerprint_data(args.set, out, progress=False, overwrite=True)
    fit_s = time.perf_counter() - began
    majority = {g.id: max(g.recipes, key=g.recipes.get) for g in fp.groups}
    began = time.perf_counter()
    labels = label_lr(out / "fingerprint.json", args.set / "test" / "lr")
    label_s = time.perf_counter() - began
    right, total = Counter(), Counter()
    for label in labels:
        recipe = truth[label.path.stem]
        total[recipe] += 1
        right[recipe] += majority[label.group] == recipe
    cv = fp.classifier.get("accuracy") if fp.classifier else None
    print(f"{args.set}: {len(fp.pairs)} training pairs -> {len(fp.groups)} groups, purity "
          f"{fp.purity():.1%}; fingerprint {fit_s:.1f} s, labelling {len(labels)} images "
          f"{label_s:.1f} s")
    if cv is not None:
        print(f"classifier cross-validated accuracy {cv:.1%} (chance {fp.classifier.get('chance', 0):.1%})")
    print("| recipe | test images | right | accuracy |\n|---|---|---|---|")
    for recipe in sorted(total):
        print(f"| {recipe} | {total[recipe]} | {right[recipe]} | {right[recipe] / total[recipe]:.1%} |")
    n, ok = sum(total.values()), sum(right.values())
    chance = max(total.values()) / n
    print(f"| all | {n} | {ok} | **{ok / n:.1%}** (chance {chance:.1%}) |")
    records.append("blind", {"set": args.set.name}, {
        "groups": len(fp.groups), "purity": round(100 * fp.purity(), 1),
        **({"cv_accuracy": round(100 * cv, 1),
            "cv_chance": round(100 * fp.classifier.get("chance", 0), 1)} if cv is not None else {}),
        "test_images": n, "right": ok, "accuracy": round(100 * ok / n, 1), "chance": round(100 * chance, 1),
        "right_by_recipe": {r: f"{right[r]}/{total[r]}" for r in sorted(total)},
        "fingerprint_s": round(fit_s, 1)})


if __name__ == "__main__":
    main()
