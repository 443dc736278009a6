"""Self-ensemble of 2, 4 and 8 flips/rotations on a set's test pairs: test PSNR (border 4, RGB)
of each against one pass, per recipe where the set records them, and with the LR-consistency
refinement an ``upres auto`` run chose (``--run``), which overlaps with it. Each image's 8
flips/rotations run once; the sizes average the ones ``engine.TRANSFORMS`` names.

    python benchmarks/bench_self_ensemble.py MODEL SET [--run RUN]

MODEL: weights or a pretrained name; SET: a folder with test/lr and test/hr."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import records
from upres.degradation.recipes import read_labels
from upres.inference.engine import TRANSFORMS, dihedral, dihedral_inverse
from upres.inference.ensemble import rgb_input, to_image
from upres.inference.upscaler import Upscaler
from upres.io import images
from upres.scoring import metrics


def refiner_of(run: Path):
    """The refinement ``upres auto`` kept in RUN (None where it kept none)."""
    from upres.degradation.fingerprint import Fingerprint
    from upres.degradation.refine import Refiner

    refine = json.loads((run / "auto.json").read_text())["phases"]["end"]["refine"]
    if not refine.get("keep"):
        return None
    refiner = Refiner(Fingerprint.load(run / "fingerprint" / "fingerprint.json"))
    refiner.enabled, refiner.threshold = set(refine["enabled_groups"]), refine["threshold"]
    return refiner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("set", type=Path)
    parser.add_argument("--run", type=Path, help="an upres auto run whose refinement to apply")
    parser.add_argument("--backend", default="torch", choices=("torch", "openvino"))
    args = parser.parse_args()
    up = Upscaler(args.model, backend=args.backend, tile=0, cache_converted=False)
    refiner = refiner_of(args.run) if args.run else None
    labels = read_labels(args.set, "test") or {}
    sizes = {1: (0,), **TRANSFORMS}
    scores: dict[str, dict[tuple[int, bool], list[float]]] = {}  # group -> (size, refined) -> PSNRs
    passes, seconds = 0, 0.0
    for hr_path in images.list_images(args.set / "test" / "hr"):
        hr = images.read_image(hr_path)
        lr = rgb_input(images.read_image(args.set / "test" / "lr" / hr_path.name), hr_path)
        flips = []
        for k in range(8):
            start = time.perf_counter()
            out = up.upscale_float(np.ascontiguousarray(dihedral(lr, k, (0, 1))))
            seconds += time.perf_counter() - start
            passes += 1
            flips.append(dihedral_inverse(out, k, (0, 1)))
        flips = np.stack(flips)
        for n, ks in sizes.items():
            for refined in ([False, True] if refiner else [False]):
                pred = flips[list(ks)].mean(0)
                psnr = metrics.psnr(to_image(refiner(pred, lr) if refined else pred, hr), hr, 4)
                for group in ("all", labels.get(hr_path.stem)):
                    if group:
                        scores.setdefault(group, {}).setdefault((n, refined), []).append(psnr)
    keys = list(scores["all"])
    print(f"{up.notes[0]}; {seconds / passes:.2f} s per pass over {passes // 8} images")
    print("| images | " + " | ".join(f"x{n}{' refined' if r else ''}" + ("" if n == 1 else " (gain)")
                                    for n, r in keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for group, by in sorted(scores.items(), key=lambda kv: kv[0] != "all"):
        mean = {k: float(np.mean(v)) for k, v in by.items()}
        cells = [f"{mean[(n, r)]:.3f}" if n == 1 else f"{mean[(n, r)] - mean[(1, r)]:+.3f}"
                 for n, r in keys]
        print(f"| {group} ({len(by[(1, False)])}) | " + " | ".join(cells) + " |")
        records.append("self-ensemble", {"set": args.set.name, "model": str(args.model), "group": group}, {
            "images": len(by[(1, False)]), "one_pass_psnr": round(mean[(1, False)], 3),
            **{f"gain_x{n}{'_refined' if r else ''}": round(mean[(n, r)] - mean[(1, r)], 3)
               for n, r in keys if n != 1},
            "seconds_per_pass": round(seconds / passes, 2)}, note=up.notes[0])


if __name__ == "__main__":
    main()
