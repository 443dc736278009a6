"""Phases check, fingerprint and split: every pair checked before any work, the training pairs'
recipe groups, and validation pairs stratified by group (centres of large ones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from upres.auto.journal import AutoRun
from upres.errors import DataError, listing
from upres.io import images
from upres.io.pairs import Pair, PairCache, find_pairs

VAL_CROP = 192  # LR pixels a side of the centre validated, of pairs over twice its square


def load_pairs(run: AutoRun) -> tuple[list[Pair], list[Pair], int]:
    pairs, problems = find_pairs(run.data / "train" / "lr", run.data / "train" / "hr")
    val = []
    if (run.data / "val").is_dir():
        val, more = find_pairs(run.data / "val" / "lr", run.data / "val" / "hr")
        problems += more
    if problems:
        raise DataError(f"{len(problems)} problem(s) in {run.data}:" + listing(problems))
    lr_size, hr_size = (images.header_size(p) for p in (pairs[0].lr, pairs[0].hr))
    return pairs, val, max(1, round(hr_size[0] / max(lr_size[0], 1)))


def check_data(run: AutoRun) -> dict:
    """Every pair matched, decoded and checked (into the decode cache training reuses), the
    test images listed with their sizes: all problems at once, before any work."""
    pairs, val, scale = load_pairs(run)
    test_dir = run.data / "test" / "lr"
    tests = images.list_images(test_dir) if test_dir.is_dir() else []
    if not tests:
        raise DataError(f"{test_dir}: no test images to predict (auto writes a submission for "
                        "DATA/test/lr)")
    problems, pixels = [], 0
    for path in tests:
        try:
            w, h = images.header_size(path)
            pixels += w * h
        except images.ImageError as err:
            problems.append(str(err))
    if problems:
        raise DataError(f"{len(problems)} problem(s) in {test_dir}:" + listing(problems))
    cache = PairCache(pairs + val, scale, run.options.cache_dir, progress=run.options.progress)
    train_pixels = sum(int(np.prod(cache.load(i)[0].shape[:2])) for i in range(len(pairs)))
    return {"train_pairs": len(pairs), "val_pairs_given": len(val), "scale": scale,
            "train_megapixels": round(train_pixels / 1e6, 4), "test_images": len(tests),
            "test_megapixels": round(pixels / 1e6, 4)}


def fingerprint_train(run: AutoRun) -> dict:
    """The training pairs' degradation groups (recipes), their page and the blind classifier."""
    from upres.degradation.fingerprint import fingerprint
    from upres.degradation.recipes import read_labels
    from upres.degradation.report import write_report

    labels = read_labels(run.data, "train")
    fp, cache = fingerprint(run.pairs, run.scale, run.options.cache_dir, labels,
                            run.options.progress)
    folder = run.out / "fingerprint"
    folder.mkdir(parents=True, exist_ok=True)
    fp.save(folder / "fingerprint.json")
    write_report(fp, folder / "fingerprint.html", cache.load, [p.name for p in run.pairs])
    c = fp.classifier or {}
    return {"groups": len(fp.groups), "sizes": [g.count for g in fp.groups],
            "posts": [g.post["kind"] for g in fp.groups], "purity": fp.purity(),
            "classifier_accuracy": c.get("accuracy"), "classifier_chance": c.get("chance"),
            "group_of": {p.name: p.group for p in fp.pairs}}


def split_validation(run: AutoRun) -> dict:
    """Validation pairs: DATA/val when it exists, else about a tenth of the training pairs
    (4 to 12), drawn from every fingerprint group in turn, so that each recipe is scored; of
    large pairs, their centres (``crop_validation``)."""
    split = _split(run)
    return {**split, "crop": crop_validation(run, val_files(run, split=split))}


def _split(run: AutoRun) -> dict:
    if run.val_pairs:
        return {"val": None, "from": "DATA/val", "count": len(run.val_pairs)}
    group_of = run.journal["fingerprint"]["group_of"]
    rng = np.random.default_rng([run.options.seed, 5])
    by_group: dict[int, list[str]] = {}
    for name in rng.permutation(sorted(group_of)).tolist():
        by_group.setdefault(group_of[name], []).append(name)
    count = int(min(max(round(0.1 * len(run.pairs)), 4), 12, max(len(run.pairs) - 2, 1)))
    order = [names[i] for i in range(max(map(len, by_group.values())))
             for _, names in sorted(by_group.items()) if i < len(names) - (len(names) > 1)]
    return {"val": order[:count] or [sorted(group_of)[0]], "from": "training pairs, stratified by group",
            "count": min(count, max(len(order), 1))}


def crop_validation(run: AutoRun, files: list[dict[str, Path]]) -> int | None:
    """Where validation LR images hold over twice ``VAL_CROP`` squared pixels, every pair's
    centre (``VAL_CROP`` LR pixels a side, the HR aligned) is written to ``RUN/val`` and scored
    instead: at competition size (512x512 LR) one pair cost x4plus 61 s in fp32 on a 2-core CPU,
    so a validation could afford two images (step-0 scoring took 438 s of a 20-minute budget,
    79 s on four centres); crops let it see more images for the time.
    Files are numbered in the stratified order, so that training's first N are auto's."""
    if not _large(files):
        return None
    centre_crops(files, run.out / "val", run.scale)
    return VAL_CROP


def _large(files: list[dict[str, Path]]) -> bool:
    return max(w * h for w, h in (images.header_size(f["lr"]) for f in files)) > 2 * VAL_CROP ** 2


def centre_crops(files: list[dict[str, Path]], folder: Path, scale: int) -> list[dict[str, Path]]:
    """Each pair's centre, ``VAL_CROP`` LR pixels a side and the HR aligned, written to
    ``folder/lr`` and ``folder/hr`` numbered in order: the pairs as files."""
    crops = []
    for i, f in enumerate(files):
        lr, hr = images.read_image(f["lr"]), images.read_image(f["hr"])
        h, w = lr.shape[:2]
        y, x, s, c = max(h - VAL_CROP, 0) // 2, max(w - VAL_CROP, 0) // 2, scale, VAL_CROP
        name = f"{i:03d}-{f['lr'].stem}.png"
        crops.append({"lr": folder / "lr" / name, "hr": folder / "hr" / name})
        images.write_image(crops[-1]["lr"], lr[y:y + c, x:x + c])
        images.write_image(crops[-1]["hr"], hr[y * s:(y + c) * s, x * s:(x + c) * s])
    return crops


UNSEEN_PAIRS = 2  # training pairs per recipe group that validation did not see, for the end's weights


def training_pairs_of(run: AutoRun, groups: list[int]) -> dict[int, list[dict[str, Path]]]:
    """Up to ``UNSEEN_PAIRS`` training pairs of each fingerprint group (by name; validation's
    held out), as files: their centres in ``RUN/unseen`` where they are large, as validation's."""
    held = set(run.journal["split"]["val"] or [])
    group_of = run.journal["fingerprint"]["group_of"]
    chosen = {g: sorted(n for n, h in group_of.items() if h == g and n not in held)[:UNSEEN_PAIRS]
              for g in groups}
    by_name = {p.name: {"lr": p.lr, "hr": p.hr} for p in run.pairs}
    files = [by_name[n] for g in groups for n in chosen[g]]
    if files and _large(files):
        files = centre_crops(files, run.out / "unseen", run.scale)
    found, k = {}, 0
    for g in groups:
        found[g], k = files[k:k + len(chosen[g])], k + len(chosen[g])
    return found


def val_files(run: AutoRun, count: int | None = None, split: dict | None = None) -> list[dict[str, Path]]:
    """The validation pairs as ``{"lr", "hr"}`` paths (their crops where they were cropped), in
    their stratified order."""
    split = split or run.journal["split"]
    pairs = run.val_pairs or [p for name in split["val"] for p in run.pairs if p.name == name]
    if split.get("crop"):
        names = [f"{i:03d}-{p.lr.stem}.png" for i, p in enumerate(pairs[:count])]
        return [{"lr": run.out / "val" / "lr" / n, "hr": run.out / "val" / "hr" / n} for n in names]
    return [{"lr": p.lr, "hr": p.hr} for p in pairs[:count]]


def val_groups(run: AutoRun, count: int) -> list[int] | None:
    """The fingerprint group of each of the first ``count`` validation pairs (None for DATA/val:
    its pairs are fitted where the refinement is chosen)."""
    if run.val_pairs:
        return None
    group_of = run.journal["fingerprint"]["group_of"]
    return [group_of[name] for name in run.journal["split"]["val"][:count]]
