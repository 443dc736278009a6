"""``upres auto``: from a competition folder and a wall-clock budget to the best submission the
budget buys, every choice made by measurement on held-out validation pairs stratified by
fingerprint group, and written down in ``RUN/auto.json`` with its figures.

``run_auto`` reads top to bottom: check the data, fingerprint it, split off validation, score
the candidate starts at step 0, probe each arm (learning-rate range test, step time, memory),
share the training time by successive halving among the arms, measure what self-ensemble buys,
give the rest to the winner, then decide ensemble and refinement on validation and predict the
test set. Each phase is recorded when it ends; ``--resume`` after a kill skips the recorded
phases and continues training from the arms' checkpoints. The time after training (validation,
prediction) is estimated from measured throughput and reserved, so the whole run ends at the
budget."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from upres.errors import DataError, TrainingInterrupted, UpresError
from upres.inference.shard import Shard, current_shard
from upres.io import images
from upres.io.files import atomic_write_bytes, read_jsonl
from upres.io.pairs import Pair, PairCache, find_pairs
from upres.io.pretrained import PRETRAINED
from upres.training.config import Config, load_config

FORMAT = "upres-auto/1"
BICUBIC = "bicubic"  # the end's model where nothing beats bicubic in the time (auto.json "models")
VAL_SHARE = 0.04  # of the budget, at most, for one validation pass (fewer pairs if needed)
VAL_CROP = 192  # LR pixels a side of the centre validated, of pairs over twice its square
PROBE_SHARE = 0.08  # of the training time, at most, for the probes
HALVING_SHARE = 0.45  # of the training time, for successive halving; the rest to the winner
MIN_STEPS = 800  # steps an arm's schedule should get (else smaller crops or batches): at the same
# HR pixels, RealSR on other6 scored 23.733 / 23.788 / 23.819 dB in 200 x 192^2 x 4, 448 x 128^2 x 4
# and 800 x 96^2 x 4 steps (benchmarks/bench_steps.py; 1.22x the time for the last)
FEWEST_STEPS = 50  # a fine-tune that cannot get this many steps is not an arm
ROUND_STEPS = 100  # a halving round holding fewer steps per arm cannot tell two levers apart
RANGE_STEPS = 24  # a range test of fewer steps is too noisy to trust
# and one whose rate falls under a tenth of the usual one is distrusted too: 40 steps with x4plus
# on known6 put the smoothed minimum at the first step (3.3e-7, 1e-5 after the clip; 2e-4 works)
DEFAULT_LR = {False: 2e-4, True: 5e-4}  # fine-tuning (BasicSR's), from scratch: if not measured
KEEP_DB = 0.01  # a lever at the end must gain at least this on validation to be kept
LEVER_SHARE = 0.3  # of the final's time, at most, for a lever where training's slope is unknown
SPECIALIST_STEPS = 10  # a runner-up's specialist that cannot train this many steps is not trained
# validations spanning this ratio of steps, at least, read a slope (0.005 dB between steps 73
# and 74 read as 0.369 dB per e-fold on 512x512 pairs)
MIN_STEP_RATIO = 1.2
PRECISION_DB = 0.01  # the fast inference precision may lose at most this against fp32
# and must be this share faster: on an H200, x4plus on minicomp's small validation images ran
# 1.38x slower in fp16 autocast than in fp32 (TF32), the casts outweighing the faster convolutions
PRECISION_GAIN = 0.05
LAYOUT_GAIN = 0.05  # channels_last is taken where a step is at least this share faster
BACKEND_GAIN = 0.05  # OpenVINO runs the end where it is at least this share faster than PyTorch
OPENVINO_MIN_END = 60.0  # seconds of a PyTorch pass over validation and test under which it cannot pay
# Sizes timed beyond the probe's: a fit from 64 x 4 and 96 x 8 put x4plus at 192 x 8 at 2.3 s a
# step on minicomp, where it ran at 4 to 5 s (the cost per pixel grows with the crop), so a size
# more than 1.5x the pixels of any timed one is timed before it is planned on
SIZE_TIMINGS = 3
# The final schedule's steps over what its measured speed fits: stopped by time at 1/1.1 of its
# length, a cosine is at 2% of its peak; run out of steps early and the time is lost (known6 at
# 30m: the halving round's median speed was 13% under the final's, 2.5 minutes went unused)
FINAL_OVERSHOOT = 1.1
# ... and where no halving round logged a speed (one arm), only the probe's 5 timed steps: on
# big6 without native bf16 its 2.12 s a step planned 355 steps that were done in 637 of 695 s.
# Stopped by time at 1/1.25 of its length, a cosine is at 10% of its peak
PROBE_OVERSHOOT = 1.25
SCRATCH_MIN_STEPS = 20_000  # a preset from scratch is a candidate only if it gets this many
# A preset from scratch whose first timing (crop 64 x batch 4, the smallest) gives it under
# 1/SCRATCH_SLACK of those steps is dropped untimed in other layouts and sizes: on an H200 with a
# 4-minute budget the probes took 110 s, most on the layouts and sizes of 24 presets that they
# then dropped (160 to 2,100 steps each)
SCRATCH_SLACK = 2.0
# of the time left, at most, for a start's end (validation, test set) if it trains: at 0.5,
# big6 at 20m gave no start time to train (x4plus-anime's end ~8.9 min of the 17.4 left), where
# 10.9 minutes of training had gained 1.2 dB; a short training that stays under bicubic on
# validation is replaced by bicubic at the end (``floor_at_bicubic``)
END_SHARE = 0.6


class AutoError(UpresError):
    """``upres auto`` cannot run as asked (the message says why, with the figures)."""


@dataclass
class AutoOptions:
    budget: float  # seconds of wall-clock time for the whole run
    device: str = "auto"
    seed: int = 0
    pretrained: tuple[str, ...] = tuple(PRETRAINED)  # pretrained names tried as starts
    candidates: tuple[str, ...] = ()  # the user's own weights files, tried as starts
    presets: str = "auto"  # "auto" (on an accelerator), "none" or names: presets from scratch
    cache_dir: str | None = None
    progress: bool = True


class Clock:
    """Seconds spent on the run, across resumed attempts."""

    def __init__(self, budget: float, spent_before: float = 0.0) -> None:
        self.budget, self.spent_before, self.start = budget, spent_before, time.monotonic()

    def elapsed(self) -> float:
        return self.spent_before + time.monotonic() - self.start

    def left(self) -> float:
        return self.budget - self.elapsed()


class Journal:
    """``auto.json``: every phase's measured figures and decisions, written atomically when a
    phase ends; a resumed run skips the phases it holds."""

    def __init__(self, path: Path, data: dict, main: bool = True) -> None:
        self.path, self.data, self.main = path, data, main  # only rank 0 writes

    @classmethod
    def open(cls, out: Path, resume: bool, options: dict) -> Journal:
        path = out / "auto.json"
        if resume:
            if not path.exists():
                raise AutoError(f"{out}: nothing to resume (no auto.json); run without --resume")
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise AutoError(f"{path}: not readable ({err}); move the folder away") from None
            if data.get("format") != FORMAT:
                raise AutoError(f"{path}: not an upres auto record")
            return cls(path, data)
        if out.exists() and any(out.iterdir()):
            raise AutoError(f"{out}: the folder holds files already; pass --resume to continue "
                            "that run, or choose a new --out")
        return cls(path, {"format": FORMAT, "options": options, "phases": {}, "spent": 0.0})

    def done(self, phase: str) -> bool:
        return phase in self.data["phases"]

    def __getitem__(self, phase: str) -> dict:
        return self.data["phases"][phase]

    def record(self, phase: str, result: dict, clock: Clock, started: float) -> dict:
        result = {**result, "began": round(started, 2),
                  "seconds": round(clock.elapsed() - started, 2)}
        self.data["phases"][phase] = result
        self.save(clock)
        return result

    def save(self, clock: Clock) -> None:
        self.data["spent"] = round(clock.elapsed(), 2)
        if self.main:
            text = json.dumps(self.data, indent=1, default=_plain)
            atomic_write_bytes(self.path, (text + "\n").encode())


@dataclass
class AutoRun:
    """What the phases share: the folders, options, clock, journal and this process's shard."""

    data: Path
    out: Path
    options: AutoOptions
    clock: Clock
    journal: Journal
    shard: Shard
    say: Callable[[str], None]
    pairs: list[Pair] = field(default_factory=list)
    val_pairs: list[Pair] = field(default_factory=list)  # from DATA/val, when it exists
    scale: int = 4
    end_speed: float = 1.0  # the end's inference time as timed at the levers over the estimate
    test_per_mp: dict[str, float] = field(default_factory=dict)  # an arm timed on a test image

    def phase(self, name: str, work: Callable[[AutoRun], dict]) -> dict:
        """Run a phase once: rank 0 does the work, records it and tells the other ranks, whose
        journals hold it too (later phases read it there)."""
        if self.journal.done(name):
            return self.journal[name]
        started = self.clock.elapsed()
        self.say(f"[{_minutes(started)} / {_minutes(self.clock.budget)}] {name} ...")
        result = self.journal.record(name, work(self), self.clock, started) if self.shard.main else None
        result = self.shard.broadcast(result)
        self.journal.data["phases"][name] = result
        return result


def _plain(value):
    """NumPy scalars (measured figures) as JSON numbers and booleans."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _jsonable(options: AutoOptions) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(options).items()
            if k != "progress"}


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


# --------------------------------------------------------------------------- the pipeline


@dataclass
class AutoResult:
    out: Path
    submission: Path
    record: dict


def run_auto(data: str | Path, out: str | Path, options: AutoOptions, resume: bool = False,
             say: Callable[[str], None] = print) -> AutoResult:
    data, out = Path(data), Path(out)
    shard = current_shard(options.device)
    preset_names(options.presets, shard.device)  # a misspelt name fails now, not minutes in
    opened = Journal.open(out, resume, _jsonable(options)).data if shard.main else None
    journal = Journal(out / "auto.json", shard.broadcast(opened), shard.main)
    journal.data["options"]["budget"] = options.budget  # a resumed run may be given more
    reopen_bicubic(journal)
    clock = Clock(options.budget, journal.data["spent"])
    run = AutoRun(data, out, options, clock, journal, shard, say if shard.main else (lambda _: None))
    out.mkdir(parents=True, exist_ok=True)
    try:
        _run_phases(run)
    except TrainingInterrupted:
        raise TrainingInterrupted(f"interrupted; run the same command with --resume (and --out "
                                  f"{out}) to continue") from None
    if shard.main:
        from upres.training.auto_report import write_report

        journal.data["total_seconds"] = round(clock.elapsed(), 2)
        journal.save(clock)
        write_report(journal.data, out)
        say(f"finished in {_minutes(clock.elapsed())} of {_minutes(options.budget)}")
    return AutoResult(out, out / "submission", journal.data)


def _run_phases(run: AutoRun) -> None:
    run.phase("check", check_data)
    run.pairs, run.val_pairs, run.scale = _load_pairs(run)
    run.phase("fingerprint", fingerprint_train)
    run.phase("split", split_validation)
    run.phase("candidates", score_candidates)
    if run.phase("probes", probe_arms).get("bicubic"):
        run.phase("end", bicubic_end)
    else:
        run_halving(run)
        run.end_speed = run.phase("levers", measure_levers).get("speed", {}).get("ratio", 1.0)
        run_final(run)
        run.phase("end", decide_end)
    run.phase("submit", submit)


def reopen_bicubic(journal: Journal) -> None:
    """A run that ended in bicubic, resumed with a larger budget, probes again (the budget may
    now train a start); what the earlier phases measured is kept."""
    probes = journal.data["phases"].get("probes", {})
    if probes.get("bicubic") and journal.data["options"]["budget"] > probes["budget"]:
        for phase in ("probes", "end", "submit"):
            journal.data["phases"].pop(phase, None)


# --------------------------------------------------------------------------- data


def _load_pairs(run: AutoRun) -> tuple[list[Pair], list[Pair], int]:
    pairs, problems = find_pairs(run.data / "train" / "lr", run.data / "train" / "hr")
    val = []
    if (run.data / "val").is_dir():
        val, more = find_pairs(run.data / "val" / "lr", run.data / "val" / "hr")
        problems += more
    if problems:
        raise DataError(f"{len(problems)} problem(s) in {run.data}:\n  " + "\n  ".join(problems))
    lr_size, hr_size = (images.header_size(p) for p in (pairs[0].lr, pairs[0].hr))
    return pairs, val, max(1, round(hr_size[0] / max(lr_size[0], 1)))


def check_data(run: AutoRun) -> dict:
    """Every pair matched, decoded and checked (into the decode cache training reuses), the
    test images listed with their sizes: all problems at once, before any work."""
    pairs, val, scale = _load_pairs(run)
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
        raise DataError(f"{len(problems)} problem(s) in {test_dir}:\n  " + "\n  ".join(problems))
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


# --------------------------------------------------------------------------- candidates


def crop_validation(run: AutoRun, files: list[dict[str, Path]]) -> int | None:
    """Where validation LR images hold over twice ``VAL_CROP`` squared pixels, every pair's
    centre (``VAL_CROP`` LR pixels a side, the HR aligned) is written to ``RUN/val`` and scored
    instead: at competition size (512x512 LR) one pair cost x4plus 61 s in fp32 on a 2-core CPU,
    so a validation could afford two images (step-0 scoring took 438 s of a 20-minute budget,
    79 s on four centres); crops let it see more images for the time.
    Files are numbered in the stratified order, so that training's first N are auto's."""
    sizes = [images.header_size(f["lr"]) for f in files]
    if max(w * h for w, h in sizes) <= 2 * VAL_CROP ** 2:
        return None
    for i, f in enumerate(files):
        lr, hr = images.read_image(f["lr"]), images.read_image(f["hr"])
        h, w = lr.shape[:2]
        y, x, s, c = max(h - VAL_CROP, 0) // 2, max(w - VAL_CROP, 0) // 2, run.scale, VAL_CROP
        name = f"{i:03d}-{f['lr'].stem}.png"
        images.write_image(run.out / "val" / "lr" / name, lr[y:y + c, x:x + c])
        images.write_image(run.out / "val" / "hr" / name, hr[y * s:(y + c) * s, x * s:(x + c) * s])
    return VAL_CROP


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


def _score(model, files: list[dict], scale: int, device: str, self_ensemble: str = "off",
           dtype: str = "fp32"):
    """(mean PSNR, seconds) of a model on validation pairs, as training validation scores."""
    from upres.inference.upscaler import Upscaler

    up = Upscaler(model, device=device, backend="torch", dtype=dtype, tile=0,
                  self_ensemble=self_ensemble, cache_converted=False)
    return _score_with(up, files, scale)


def _score_with(up, files: list[dict], scale: int) -> tuple[float, float]:
    """(mean PSNR, seconds) of an ``Upscaler`` on validation pairs."""
    from upres.scoring import metrics

    start, scores = time.perf_counter(), []
    for f in files:
        lr, hr = images.read_image(f["lr"]), images.read_image(f["hr"])
        scores.append(metrics.psnr(up.upscale_array(lr), hr, scale))
    return float(np.mean(scores)), time.perf_counter() - start


def _starts(run: AutoRun) -> tuple[list[str], list[str]]:
    """The weights to start from (pretrained names installed, then the user's files), and why
    any asked-for start is missing."""
    from upres.io.pretrained import pretrained_available

    starts, missing = [], []
    for name in run.options.pretrained:
        (starts if pretrained_available(name) else missing).append(name)
    missing = [f"{n}: not installed (pip install 'upres[pretrained]')" for n in missing]
    for path in run.options.candidates:
        (starts if Path(path).is_file() else missing).append(path)
    return starts, missing + [f"{p}: no such file" for p in run.options.candidates
                              if not Path(p).is_file()]


def score_candidates(run: AutoRun) -> dict:
    """Each start timed on one validation pair, then the reference (``_reference``) scored: its
    speed sets how many pairs a validation can afford (``_val_count``), and the end's precision,
    backend and the test images' costs are measured on it. Each other start is scored at step 0
    unless even the reference's fastest measured end could not run it in ``END_SHARE`` of the
    time left: on big6 without native bf16, scoring x4plus and RealSR (whose test passes took
    longer than the training could get) and timing x4plus on a test image in both backends took
    6.3 of 20 minutes, and no start could train. A preset from scratch is timed only; bicubic
    is scored beside them. The dtypes each family runs correctly in are recorded: the end's
    fast precision applies only to models that support it."""
    from upres.scoring import metrics

    starts, missing = _starts(run)
    files = val_files(run)
    timed = time_starts(run, starts, preset_names(run.options.presets, run.shard.device), files[:1],
                        missing)
    if not timed:
        raise AutoError("no candidate start: " + ("; ".join(missing) or "none asked for")
                        + ". Give --candidate FILE or install the pretrained models")
    reference = _reference(run, timed, files)
    files = files[:_val_count(run, reference, files)]
    scored, precision, backend, first = _score_starts(run, timed, reference, files)
    bicubic = float(np.mean([metrics.psnr(metrics.bicubic_upscale(images.read_image(f["lr"]), run.scale),
                                          images.read_image(f["hr"]), run.scale) for f in files]))
    costs, backend = measure_test_costs(run, first, files, precision["dtype"], backend)
    order = {e["name"]: i for i, e in enumerate(timed)}
    return {"bicubic_psnr": round(bicubic, 4), "candidates": sorted(scored, key=lambda e: order[e["name"]]),
            "missing": missing, "reference": reference["name"], "val_used": len(files),
            "val_megapixels": round(_megapixels(files), 4), "precision": precision,
            "end_backend": backend, "test_costs": costs}


def time_starts(run: AutoRun, starts: list[str], presets: list[str], pair: list[dict],
                missing: list[str]) -> list[dict]:
    """Each start, then each preset, timed on one validation pair; on an accelerator after an
    untimed pass (on an H200 x4plus's first pass took 3.4 s, the CUDA context and cuDNN's
    choice of kernels, where a warm one takes 0.05 s: that had cut validation to 2 pairs).
    Presets are not timed once the budget is spent; ``missing`` says so."""
    timed = []
    for source, preset in [(s, None) for s in starts] + [(None, p) for p in presets]:
        if preset and run.clock.left() <= 0:
            missing.append(f"{preset}: not timed, the budget is spent")
            continue
        entry, model = _candidate(source, preset, run.scale)
        if run.shard.device != "cpu":
            _score(model, pair, run.scale, run.shard.device)
        _, seconds = _score(model, pair, run.scale, run.shard.device)
        timed.append({**entry, "params": sum(p.numel() for p in model.parameters()),
                      "seconds_per_mp": round(seconds / _megapixels(pair), 2)})
        run.say(f"  {entry['name']}: {seconds:.1f} s on one validation pair")
    return timed


def _score_starts(run: AutoRun, timed: list[dict], reference: dict, files: list[dict]) -> tuple:
    """The starts scored at step 0, the reference first (with the end's precision and backend
    measured on it), each other one unless it is too slow for the reference's fastest end: too
    slow to train where the reference can, else too slow to predict as it is (then no start
    trains and the best scored one predicts: ``untrained_start``); (records, precision,
    backend, the reference's source and PyTorch seconds per MP or None)."""
    scored, precision, backend, first, share = [], _FP32, _TORCH, None, END_SHARE
    for entry in sorted(timed, key=lambda e: e is not reference):
        too_slow = None if entry is reference else _end_too_slow(run, entry, files,
                                                                  _fastest(precision, backend), share)
        if too_slow:
            scored.append({**entry, "psnr0": None, "unscored": too_slow})
            run.say(f"  {entry['name']}: not scored, {too_slow}")
            continue
        model = _candidate(entry.get("source"), entry.get("preset"), run.scale)[1]
        psnr0, seconds = _score(model, files, run.scale, run.shard.device)
        if entry is reference and "source" in entry:
            precision = choose_precision(model, files, run, psnr0, seconds)
            backend = choose_end_backend(entry["source"], files, run, psnr0, seconds, precision,
                                         run.journal["check"]["test_megapixels"])
            first = entry["source"], seconds / _megapixels(files) * precision["speed_ratio"]  # PyTorch's
        per_mp = seconds / _megapixels(files)
        if entry is reference and _end_too_slow(run, {"seconds_per_mp": per_mp}, files,
                                                _fastest(precision, backend)):
            share = 1.0  # the reference cannot train: the others are scored for predicting as they are
        scored.append({**entry, "psnr0": None if entry.get("preset") else round(psnr0, 4),
                       "val_seconds": round(seconds, 2), "seconds_per_mp": round(per_mp, 2)})
        run.say(f"  {entry['name']}: " + (f"from scratch, a validation in {seconds:.1f} s"
                                          if entry.get("preset") else
                                          f"step-0 validation PSNR {psnr0:.3f} dB in {seconds:.1f} s"))
    return scored, precision, backend, first


def _fastest(precision: dict, backend: dict) -> float:
    """The end's fastest measured speed against PyTorch fp32: the fast precision's, or
    OpenVINO's where it scored as PyTorch."""
    return min(precision["speed_ratio"], backend["val_speed_ratio"] if backend.get("exact") else 1.0)


def _candidate(source: str | None, preset: str | None, scale: int) -> tuple[dict, object]:
    """A start's record (name, architecture, the dtypes and backends its family runs in) and
    its model: the weights loaded, or a preset built from scratch."""
    from upres.inference.backends import openvino_refusal
    from upres.io.loading import load_weights, model_from_weights
    from upres.models import registry
    from upres.models.registry import describe

    if preset:
        arch = registry.presets()[preset][0]
        model = registry.build_model(arch, registry.hyperparameters(arch, scale, preset))
        entry = {"name": preset, "preset": preset, "arch": arch}
    else:
        weights = load_weights(source)
        model = model_from_weights(weights)
        entry = {"name": _short(source), "source": str(source), "arch": weights.arch,
                 "hparams": weights.hparams}
    return {**entry, "dtypes": list(describe(model).dtypes),
            "openvino": openvino_refusal(model, describe(model)) is None}, model


def _reference(run: AutoRun, timed: list[dict], files: list[dict]) -> dict:
    """The start the end's precision, backend and test costs are measured on: the first start
    (in the order given) whose end in fp32 fits in ``END_SHARE`` of the time left, as timed on
    one pair, else the fastest start. The likeliest to run the end: a start that cannot train
    is not the winner, and the first start's timing does not carry over to another family (on
    big6 OpenVINO ran x4plus at 1.0x its validation speed per MP on a test image, x4plus-anime
    at 1.7x)."""
    with_weights = [e for e in timed if "source" in e] or timed  # presets only where no other
    fits = [e for e in with_weights if not _end_too_slow(run, e, files[:_val_count(run, e, files)], 1.0)]
    reference = fits[0] if fits else min(with_weights, key=lambda e: e["seconds_per_mp"])
    if reference is not timed[0]:
        run.say(f"  measuring the end on {reference['name']}: "
                + ("the first start whose end fits" if fits else "the fastest start"))
    return reference


def _val_count(run: AutoRun, entry: dict, files: list[dict]) -> int:
    """How many validation pairs (2 at least) one validation of a start at its fp32 speed can
    score in ``VAL_SHARE`` of the budget. The reference's count is used: on big6 without native
    bf16 the first start (x4plus, 337 s/MP) had allowed 3 pairs, and neither it nor RealSR
    was scored; the reference (x4plus-anime, 104 s/MP) alone trained."""
    per_pair = entry["seconds_per_mp"] * max(_megapixels(files) / max(len(files), 1), 1e-9)
    return int(np.clip(VAL_SHARE * run.options.budget / max(per_pair, 1e-9), 2, max(len(files), 1)))


def _end_too_slow(run: AutoRun, entry: dict, files: list[dict], ratio: float,
                  share: float | None = None) -> str | None:
    """Why a start cannot train (or, ``share`` 1, cannot even predict as it is), where a
    validation and a pass over the test set at ``ratio`` of its fp32 speed on validation (the
    fastest end measured; the test images no slower per MP) would take over ``share`` of the
    time left (by default ``END_SHARE``); else None."""
    share = END_SHARE if share is None else share
    megapixels = _megapixels(files) + run.journal["check"]["test_megapixels"]
    seconds, left = entry["seconds_per_mp"] * ratio * megapixels, run.clock.left()
    if seconds <= share * left:
        return None
    if left <= 0:
        return "the budget is spent"
    return (f"its end (a validation and the test set) would take ~{seconds / 60:.1f} min of the "
            f"{left / 60:.1f} left" + (f" (at most {share:.0%} may go to it)" if share < 1 else ""))


_FP32 = {"dtype": "fp32", "speed_ratio": 1.0, "why": "nothing to compare"}
_TORCH = {"backend": "torch", "why": "nothing to compare"}


def measure_test_costs(run: AutoRun, first: tuple | None, files: list[dict], dtype: str,
                       backend: dict = _TORCH) -> tuple[dict, dict]:
    """What timing the validation images misses about the test set, and the end's backend
    decided on it. Seconds per megapixel grow with the image (x4plus-anime in bf16 here: 9.8
    s/MP on 120x80, 32 s/MP on 512x512, as its activations outgrow the caches), so where the
    largest test image has over twice the pixels of the largest validation one, the reference start
    (``first``: its source, PyTorch's validation seconds per MP in the end's precision) is timed
    on it as the submission runs it, and test passes are scaled by ``size_factor``. Where
    OpenVINO scored as PyTorch (``backend``) and the test set holds 4 such images or more,
    both backends are timed on it and the faster one (by more than a conversion over the test
    set) runs the end: on 192x192 validation centres OpenVINO took 0.83x and, in another run,
    0.97x PyTorch's time, on a 512x512 test image 0.6x. And the refinement's back-projection,
    per test megapixel (on known6 0.13 s an image, on 512x512 ones 1.7 s)."""
    from upres.degradation.fingerprint import Fingerprint
    from upres.degradation.refine import back_project
    from upres.inference.ensemble import rgb_input
    from upres.inference.upscaler import Upscaler
    from upres.scoring import metrics

    def pixels(path: Path) -> int:
        return int(np.prod(images.header_size(path)))

    largest = max(images.list_images(run.data / "test" / "lr"), key=pixels)
    record: dict = {"size_factor": 1.0, "refine_seconds_per_mp": 0.0}
    lr = rgb_input(images.read_image(files[0]["lr"]), files[0]["lr"])
    if first is not None and pixels(largest) > 2 * max(pixels(f["lr"]) for f in files):
        source, torch_per_mp = first
        val_per_mp = {"torch": torch_per_mp}
        if backend.get("exact"):  # OpenVINO measured and scored as PyTorch
            openvino = {"openvino": backend["seconds"] / _megapixels(files)}
            both = run.journal["check"]["test_megapixels"] >= 4 * pixels(largest) / 1e6
            val_per_mp = {**val_per_mp, **openvino} if both else openvino if \
                backend["backend"] == "openvino" else val_per_mp
        lr = rgb_input(images.read_image(largest), largest)
        per_mp, first = {}, {}
        for name in val_per_mp:
            up = Upscaler(source, end_options(run, dtype, name))
            run.say(f"  timing {_short(source)} on the largest test image, {largest.name}"
                    + (f", in {up.backend.name}" if len(val_per_mp) > 1 else ""))
            per_mp[name], first[name], sr = timed_pass(up, lr)
            run.say(f"  {largest.name}: {per_mp[name]:.1f} s/MP against {val_per_mp[name]:.1f} on "
                    "validation images" + (f" (its first call {first[name]:.0f} s longer)" if first[name]
                                           else ""))
        backend = _backend_on_test(run, backend, per_mp, largest.name)
        chosen = backend["backend"] if len(per_mp) > 1 else next(iter(per_mp))
        record.update(size_factor=round(max(per_mp[chosen] / max(val_per_mp[chosen], 1e-9), 1.0), 3),
                      timed={"image": largest.name, "seconds_per_mp": round(per_mp[chosen], 3),
                             "val_seconds_per_mp": round(val_per_mp[chosen], 3),
                             "first_call_seconds": round(first[chosen], 1),
                             "backends": {k: round(v, 3) for k, v in per_mp.items()}})
    else:
        sr = rgb_input(metrics.bicubic_upscale(images.read_image(files[0]["lr"]), run.scale),
                       files[0]["lr"])
    fp = Fingerprint.load(run.out / "fingerprint" / "fingerprint.json")
    if len(fp.groups) > 1 and fp.classifier:  # refinement is possible
        start = time.perf_counter()
        back_project(sr, lr, fp.kernel(0), run.scale)
        seconds = time.perf_counter() - start
        record["refine_seconds_per_mp"] = round(seconds / (lr.shape[0] * lr.shape[1] / 1e6), 3)
    return record, backend


def timed_pass(up, lr: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Seconds per LR MP of one image as the submission runs it, the first call's extra
    seconds, and the output. OpenVINO's first inference at a new size costs extra once per model,
    not per image (x4plus-anime on a 512x512 test image here: 27.7 s, then 19.4; PyTorch 38.8,
    then 40.2): a single timing had the 12 test images of big6 reserved 1.65x their time, and
    the run ended at 15:57 of 20:00. So OpenVINO runs the image twice and the second is timed."""
    megapixels = lr.shape[0] * lr.shape[1] / 1e6
    start = time.perf_counter()
    sr = up.upscale_float(lr)
    first = time.perf_counter() - start
    if up.backend.name != "openvino":
        return first / megapixels, 0.0, sr
    start = time.perf_counter()
    up.upscale_float(lr)
    again = time.perf_counter() - start
    return again / megapixels, max(first - again, 0.0), sr


def _backend_on_test(run: AutoRun, backend: dict, per_mp: dict[str, float], image: str) -> dict:
    """The end's backend as timed on a test image where both were (else as it was): OpenVINO
    where it saves more than a conversion over the test set."""
    if len(per_mp) < 2:
        return backend
    saves = (per_mp["torch"] - per_mp["openvino"]) * run.journal["check"]["test_megapixels"]
    chosen = "openvino" if saves > backend["convert_seconds"] else "torch"
    backend = {**backend, "backend": chosen, "why": backend["why"] + f"; on {image} "
               f"{per_mp['openvino']:.0f} s/MP against PyTorch's {per_mp['torch']:.0f}, "
               f"{saves:.0f} s saved on the test set"}
    backend.pop("speed_ratio", None)
    if chosen == "openvino":
        backend["speed_ratio"] = backend["val_speed_ratio"]
    run.say(f"  end backend {chosen}, as timed on {image}")
    return backend


def choose_precision(model, files: list[dict], run: AutoRun, psnr32: float, seconds32: float) -> dict:
    """The precision of the end (levers, final validation, the test set): the device's fast one
    (bf16 on CPUs with native bf16, fp16 on CUDA) where it scores within ``PRECISION_DB`` of fp32
    on validation and is ``PRECISION_GAIN`` faster, else fp32. On a CPU with AMX, x4plus in bf16
    ran 4.5x faster than fp32 at the same PSNR, which makes self-ensemble and the ensemble
    affordable."""
    from upres.inference.devices import pick_dtype
    from upres.models.registry import describe

    fast = pick_dtype("auto", run.shard.device, describe(model).dtypes)
    if fast == "fp32":
        return {**_FP32, "why": "no faster precision on this device"}
    _score(model, files[:1], run.scale, run.shard.device, dtype=fast)  # warm-up of its kernels
    psnr, seconds = _score(model, files, run.scale, run.shard.device, dtype=fast)
    exact, faster = psnr >= psnr32 - PRECISION_DB, seconds <= seconds32 * (1 - PRECISION_GAIN)
    ok = exact and faster
    record = {"dtype": fast if ok else "fp32", "psnr": {"fp32": round(psnr32, 4), fast: round(psnr, 4)},
              "seconds": {"fp32": round(seconds32, 3), fast: round(seconds, 3)},
              "speed_ratio": round(seconds / seconds32, 3) if ok else 1.0,
              "why": f"{fast} scored {psnr - psnr32:+.3f} dB against fp32 in "
                     f"{seconds / max(seconds32, 1e-9):.2f}x the time"
                     + ("" if exact else f" (more than {PRECISION_DB} dB lost)")
                     + ("" if faster else f" (not {PRECISION_GAIN:.0%} faster)")}
    run.say(f"  end precision {record['dtype']}: {record['why']}")
    return record


def choose_end_backend(source, files: list[dict], run: AutoRun, psnr32: float, seconds32: float,
                       precision: dict, test_megapixels: float) -> dict:
    """OpenVINO runs the end where it is installed, converts the reference start, scores within
    ``PRECISION_DB`` of fp32, is ``BACKEND_GAIN`` faster than PyTorch in the end's precision
    and saves more than its conversion on a pass over validation and test. On a 2-core CPU
    without native bf16 x4plus took 72 s on a 512x512 image in fp32 against PyTorch's 120 s
    (conversion 12 s, once per model): there the test set is most of the end, and a
    competition-size one can take the whole budget; on minicomp's 10 small test images it saved
    7 s a pass. ``speed_ratio`` is against PyTorch fp32, as the precision's is; the conversion
    is reserved for each model the end runs."""
    from upres.errors import InferenceError
    from upres.inference.openvino_backend import openvino_available
    from upres.inference.upscaler import Upscaler

    if run.shard.device != "cpu":
        return {**_TORCH, "why": f"OpenVINO runs on the CPU, not {run.shard.device}"}
    if not openvino_available():
        return {**_TORCH, "why": "OpenVINO is not installed (pip install 'upres[openvino]')"}
    torch_seconds = seconds32 * precision["speed_ratio"]
    share = 1 + test_megapixels / _megapixels(files)  # a pass over the test set beside validation's
    if torch_seconds * share < OPENVINO_MIN_END:
        return {**_TORCH, "why": f"a pass over validation and test takes PyTorch "
                f"{torch_seconds * share:.0f} s: too short for a conversion to pay"}
    run.say(f"  {_short(source)} through OpenVINO, to see if it runs the end faster")
    start = time.perf_counter()
    try:
        up = Upscaler(source, end_options(run, precision["dtype"], "openvino", tile=0))
    except InferenceError as err:
        return {**_TORCH, "why": str(err)}
    if up.backend.name != "openvino":
        return {**_TORCH, "why": up.backend.reason}
    convert = time.perf_counter() - start
    _score_with(up, files[:1], run.scale)  # warm-up
    psnr, seconds = _score_with(up, files, run.scale)
    saves = (torch_seconds - seconds) * share
    ok = psnr >= psnr32 - PRECISION_DB and seconds <= (1 - BACKEND_GAIN) * torch_seconds and saves > convert
    record = {"backend": "openvino" if ok else "torch", "dtype": up.backend.dtype,
              "exact": bool(psnr >= psnr32 - PRECISION_DB), "val_speed_ratio": round(seconds / seconds32, 3),
              "psnr": round(psnr, 4), "seconds": round(seconds, 3), "torch_seconds": round(torch_seconds, 3),
              "convert_seconds": round(convert, 2), "why": f"OpenVINO {up.backend.dtype} scored "
              f"{psnr - psnr32:+.3f} dB against PyTorch fp32 in {seconds / max(torch_seconds, 1e-9):.2f}x "
              f"PyTorch's {precision['dtype']} time, {saves:.0f} s saved a pass over validation and test "
              f"for a {convert:.0f} s conversion"}
    if ok:
        record["speed_ratio"] = round(seconds / max(seconds32, 1e-9), 3)
    run.say(f"  end backend {record['backend']}: {record['why']}")
    return record


def end_options(run: AutoRun, dtype: str, backend: str | None = None, **overrides):
    """How the end runs its models (``InferenceOptions``): through OpenVINO where
    ``choose_end_backend`` chose it (``backend``, by default as recorded; PyTorch for a family
    it does not convert), conversions kept in ``RUN/openvino``; else through PyTorch."""
    from upres.inference.upscaler import InferenceOptions

    backend = backend or run.journal["candidates"].get("end_backend", _TORCH)["backend"]
    options = {"backend": "auto" if backend == "openvino" else "torch", "dtype": dtype,
               "device": run.shard.device, "convert_cache": run.out / "openvino", **overrides}
    return InferenceOptions(**options)


def end_dtype(run: AutoRun, arms: list[str]) -> str:
    """The precision the end phases run ``arms`` in: the one measured on the reference start where
    every arm's family runs correctly in it, else fp32 (a winner of another family: fp16 on CUDA
    is not safe for window transformers); fp32 in records from before it was measured."""
    dtype = run.journal["candidates"].get("precision", _FP32)["dtype"]
    return dtype if all(_runs_in(_start_of(run, arm), dtype) for arm in arms) else "fp32"


def _start_of(run: AutoRun, arm: str) -> dict | None:
    """The candidate an arm starts from (its record at the candidates phase)."""
    name = next((a["name"][:-len(a["variant"]) - 1] for a in run.journal["probes"]["arms"]
                 if a["name"] == arm), None)
    return next((c for c in run.journal["candidates"]["candidates"] if c["name"] == name), None)


def _runs_in(candidate: dict | None, dtype: str) -> bool:
    """Whether a candidate's family supports ``dtype`` (records without dtypes: as measured)."""
    return candidate is None or dtype in candidate.get("dtypes", [dtype])


def _megapixels(files: list[dict]) -> float:
    return sum(np.prod(images.header_size(f["lr"])) for f in files) / 1e6


def _short(source: str) -> str:
    path = Path(str(source))
    return path.stem if path.suffix else str(source)


def preset_names(presets: str, device: str) -> list[str]:
    """The published presets to train from scratch: ``auto`` every one on an accelerator and
    none on a CPU (the probes would time each only to drop it), ``none`` none, else the
    named ones on any device (the probes drop those that the budget cannot train)."""
    from difflib import get_close_matches

    from upres.models import registry

    found = registry.presets()
    if presets == "none" or (presets == "auto" and device.split(":")[0] == "cpu"):
        return []
    if presets == "auto":
        return list(found)
    names = [p.strip() for p in presets.split(",") if p.strip()]
    for name in names:
        if name not in found:
            hint = get_close_matches(name, found, n=1)
            raise AutoError(f"--presets: no preset {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint
                                                                  else "") + "; `upres models` lists them")
    return names


# --------------------------------------------------------------------------- arms and probes


def arm_config(run: AutoRun, arm: dict, iterations: int, time_budget: float | None = None,
               extra: list[str] | None = None) -> Config:
    """The training config of an arm: its start, freezing, crop, batch and rate; validation on
    the held-out pairs at the end of each round."""
    split = run.journal["split"]
    o = [f"data.root={json.dumps(str(run.data))}", "data.workers=0", f"data.crop={arm['crop']}",
         f"train.batch_size={arm['batch']}", f"train.lr={arm['lr']}", "train.scheduler=cosine",
         "train.warmup=0.03", f"train.iterations={iterations}", "train.precision=auto",
         f"train.ema={arm['ema']}", "train.ema_warmup=true", f"train.seed={run.options.seed}",
         f"train.device={run.shard.device}",
         f"train.val_every={10 ** 9}", f"train.checkpoint_every={arm['checkpoint_every']}",
         "train.log_every=10", "train.keep_checkpoints=1", f"model.scale={run.scale}",
         f"train.channels_last={bool(arm.get('channels_last'))}",
         f"train.freeze={json.dumps(arm['freeze'])}", f"train.unfreeze={json.dumps(arm['unfreeze'])}",
         f"data.val_max_images={run.journal['candidates']['val_used']}", f"val.dtype={_val_dtype(run, arm)}"]
    if split["val"] is not None:  # held out from training
        o.append(f"data.val_pairs={json.dumps(split['val'])}")
    if split.get("crop"):  # validated on their centres
        o += [f"data.val_lr={json.dumps(str(run.out / 'val' / 'lr'))}",
              f"data.val_hr={json.dumps(str(run.out / 'val' / 'hr'))}"]
    if run.options.cache_dir:
        o.append(f"data.cache_dir={json.dumps(str(run.options.cache_dir))}")
    if time_budget is not None:
        o.append(f"train.time_budget={max(time_budget, 1):.1f}s")
    if arm.get("preset"):
        o += [f"model.preset={arm['preset']}"]
    else:
        o += [f"model.arch={arm['arch']}", f"model.params={json.dumps(_free_params(arm))}",
              f"init.source={json.dumps(arm['source'])}"]
    return load_config(None, [*o, *(extra or [])])


def _free_params(arm: dict) -> dict:
    """The start's hyperparameters, less the scale (model.scale holds it)."""
    from upres.models import registry

    scale_key = registry.get(arm["arch"]).scale_key
    return {k: v for k, v in arm["hparams"].items() if k != scale_key}


def head_patterns(names: list[str], share: float) -> list[str]:
    """Freeze patterns for the first ``share`` of a network's parameter tensors (registration
    order follows the forward pass in every registered family): whole modules only, by their
    name's first two components (``body.5``, ``conv_first``)."""
    def module(name: str) -> str:  # body.5.rdb1.conv1.weight -> body.5; conv_first.weight -> conv_first
        return ".".join(name.rsplit(".", 1)[0].split(".")[:2])

    cut = int(len(names) * share)
    head = {module(n) for n in names[:cut]}
    tail = {module(n) for n in names[cut:]}
    return [rf"{re.escape(m)}\." for m in sorted(head - tail, key=[module(n) for n in names].index)]


def _variants(cand: dict, names: list[str]) -> list[dict]:
    """The arms of a start: all layers training, and tail first (the first 85% of the tensors
    frozen, all training from the second half on, each step cheaper); a preset from scratch
    trains whole."""
    if cand.get("preset"):
        return [{"variant": "scratch", "freeze": [], "unfreeze": []}]
    return [{"variant": "full", "freeze": [], "unfreeze": []},
            {"variant": "tail-first", "freeze": head_patterns(names, 0.85),
             "unfreeze": [{"at": 0.5, "params": ["."]}]}]


def reserve_after_training(run: AutoRun, transforms: int, ensemble: bool,
                           starts: list[dict] | None = None) -> float:
    """Seconds the end needs: validating the final model(s), predicting the test set (each
    image ``transforms`` times: a self-ensemble's flips/rotations), writing the report; from
    the measured speed of the models it will run (before the halving has chosen, the slowest
    of ``starts``, by default of every start)."""
    halving = run.journal.data["phases"].get("halving", {})
    names = [halving.get("winner")] + ([halving.get("runner_up")] if ensemble else [])
    passes = sum(_val_seconds(run, n, end=True, starts=starts) + _test_seconds(run, n, starts) * transforms
                 for n in names)
    refine = run.journal["candidates"].get("test_costs", {}).get("refine_seconds_per_mp", 0.0)
    passes += refine * run.journal["check"]["test_megapixels"]
    report = min(10.0, 0.02 * run.options.budget)  # the report and the zip
    return 1.1 * passes + _conversions(run, names, starts) + report


def _conversions(run: AutoRun, names: list[str | None], starts: list[dict] | None) -> float:
    """Seconds to convert the end's models to OpenVINO (as timed on the reference start), once each:
    the final's weights are new; a runner-up's were converted at the levers, but not on resume."""
    backend = run.journal["candidates"].get("end_backend", _TORCH)
    cands = [_start_of(run, n) if n else None for n in names]
    count = sum(_openvino_runs(run, c) if c else any(_openvino_runs(run, s) for s in
                (starts or run.journal["candidates"]["candidates"])) for c in cands)
    return count * backend.get("convert_seconds", 0.0)


def _per_mp(run: AutoRun, arm: str | None = None, end: bool = False,
            starts: list[dict] | None = None, calibrated: bool = True) -> float:
    """Inference seconds per input megapixel of an arm's start, as measured in fp32 (training
    validates in fp32) or, ``end``, in the end's precision (the slowest of ``starts``, by
    default of every start, where no arm is named), and as re-timed at the levers unless not
    ``calibrated``."""
    cands = starts or run.journal["candidates"]["candidates"]
    start = _start_of(run, arm) if arm is not None else None
    cands = [start] if start else cands
    precision = run.journal["candidates"].get("precision", _FP32)

    def seconds(cand: dict) -> float:  # the fast precision only for families that run in it
        fast = end and _runs_in(cand, precision["dtype"])
        ratio = precision["speed_ratio"] if fast else 1.0
        if end and _openvino_runs(run, cand):
            ratio = run.journal["candidates"]["end_backend"]["speed_ratio"]
        return ratio * (cand.get("seconds_per_mp") or 0)

    return (run.end_speed if end and calibrated else 1.0) * max(seconds(c) for c in cands)


def _openvino_runs(run: AutoRun, cand: dict | None) -> bool:
    """Whether the end runs this start's family through OpenVINO (chosen, and not refused)."""
    backend = run.journal["candidates"].get("end_backend", _TORCH)
    return backend["backend"] == "openvino" and cand is not None and cand.get("openvino", False)


def _val_seconds(run: AutoRun, arm: str | None = None, end: bool = False,
                 starts: list[dict] | None = None) -> float:
    """One validation pass (over the pairs a validation uses)."""
    return _per_mp(run, arm, end, starts) * run.journal["candidates"]["val_megapixels"]


def _val_dtype(run: AutoRun, arm: dict) -> str:
    """The precision training validates an arm in: the end's where its family runs in it (it
    scored within ``PRECISION_DB`` of fp32 at step 0), else fp32."""
    dtype = run.journal["candidates"].get("precision", _FP32)["dtype"]
    return dtype if _runs_in(arm, dtype) else "fp32"


def _training_val_seconds(run: AutoRun, arm: dict) -> float:
    """One validation during training, in ``_val_dtype``: at step 0's speed (an arm's record
    holds its start's figures)."""
    fast = _val_dtype(run, arm) != "fp32"
    ratio = run.journal["candidates"].get("precision", _FP32)["speed_ratio"] if fast else 1.0
    return ratio * (arm.get("seconds_per_mp") or 0) * run.journal["candidates"]["val_megapixels"]


def _test_seconds(run: AutoRun, arm: str | None = None, starts: list[dict] | None = None) -> float:
    """One pass over the test set, in the end's precision (at the test images' size). Where the
    test images were timed as the submission runs them, the re-timing at the levers (of the
    validation images' flips) does not apply: on 512x512 test images it said 1.23x that timing,
    and the test set took 222 s against 227 s from the timing alone (refinement included)."""
    costs = run.journal["candidates"].get("test_costs", {})
    first = costs.get("timed", {}).get("first_call_seconds", 0.0)  # once per model (OpenVINO)
    if arm in run.test_per_mp:  # the winner, timed on the largest test image before the final
        return first + run.test_per_mp[arm] * run.journal["check"]["test_megapixels"]
    per_mp = _per_mp(run, arm, end=True, starts=starts, calibrated="timed" not in costs)
    return first + per_mp * costs.get("size_factor", 1.0) * run.journal["check"]["test_megapixels"]


def starts_that_leave_training(run: AutoRun) -> tuple[list[dict], list[dict]]:
    """The starts whose own end (a validation and a pass over the test set) takes at most
    ``END_SHARE`` of the time left, and why each other one is not probed: a start whose
    prediction alone would take most of the budget leaves its training too little (a large test
    set on a CPU: 30 images of 512x512 would take x4plus ~12 minutes in bf16 here, 89 s/MP as
    timed on one)."""
    left, fit, dropped = run.clock.left(), [], []
    for cand in run.journal["candidates"]["candidates"]:
        end = reserve_after_training(run, 1, False, starts=[cand])
        if cand.get("unscored"):  # found too slow when the candidates were scored
            dropped.append({"name": cand["name"], "why": f"{cand['unscored']}: not scored or trained"})
        elif end <= END_SHARE * left:
            fit.append(cand)
        else:
            dropped.append({"name": cand["name"], "why": f"its end (a validation and the test set) "
                            f"takes ~{end / 60:.1f} min of the {left / 60:.1f} left (at most "
                            f"{END_SHARE:.0%} may go to it): not trained"})
    return fit, dropped


def probe_arms(run: AutoRun) -> dict:
    """Each arm's learning rate (range test), step time and crop/batch for the time it can get;
    arms that cannot train enough steps are dropped with the figures. Tail first is an arm only
    where the halving can judge it (``_tail_first_unjudged``; on minicomp it trailed by 0.08 dB
    after 10 minutes)."""
    cands, dropped = starts_that_leave_training(run)
    seconds = run.clock.left() - reserve_after_training(run, 1, False, starts=cands) if cands else 0.0
    arms = []
    probe_steps = int(min(PROBE_SHARE * seconds / max(len(cands), 1) / 3, 40))
    min_side = min(min(images.header_size(p.hr)) for p in run.pairs)
    rounds_of = HALVING_SHARE * seconds / max(2 * len(cands), 1)  # if every start has two arms
    for cand in cands:
        names = _param_names(cand)
        variants = _variants(cand, names)
        known = None
        for variant in variants:
            arm = _probe(run, cand, variant, probe_steps, seconds, min_side, len(cands), known)
            known = arm  # the full fine-tune's rate and layout serve tail first too
            if variant["variant"] == "full" and len(variants) > 1:
                why = _tail_first_unjudged(arm, rounds_of, HALVING_SHARE * seconds / 2,
                                           variants[1]["unfreeze"][0]["at"])
                if why:
                    variants[1:] = []
                    dropped.append({"name": f"{cand['name']}-tail-first", "why": why})
            need = SCRATCH_MIN_STEPS if variant["variant"] == "scratch" else FEWEST_STEPS
            if arm["steps_planned"] < need:
                dropped.append({"name": arm["name"], "why": f"{arm['steps_planned']} steps in "
                                f"the time it would get ({need} needed)"})
                continue
            arms.append(arm)
            run.say(f"  {arm['name']}: lr {arm['lr']:.2e}, crop {arm['crop']} x batch "
                    f"{arm['batch']}, {arm['seconds_per_step']:.2f} s/step, ~{arm['steps_planned']} "
                    "steps if it wins")
    if not arms:
        return untrained_start(run, dropped)
    return {"arms": arms, "dropped": dropped, "training_seconds": round(seconds, 1),
            "probe_steps": probe_steps}


def _tail_first_unjudged(full: dict, round_seconds: float, finalist_seconds: float,
                        unfreeze_at: float) -> str:
    """Why the halving could not tell tail first from the full fine-tune, else "": rounds too
    short, or rounds that end (a finalist trains at most half the halving's time) before tail
    first unfreezes, so that they would compare the frozen tail alone: on other6 at 30 minutes
    (o30k) each start's tail-first arm trailed its full one at 47 steps, and RealSR's by 0.095 dB
    at 180, all still frozen (they unfroze at 442 of 884); minicomp's tail only trailed the full
    cosine fine-tune by 0.11 (levers-cpu)."""
    per_step = full["seconds_per_step"]
    if round_seconds / per_step < ROUND_STEPS:
        return (f"a halving round of {round_seconds:.0f} s holds {round_seconds / per_step:.0f} "
                f"steps ({ROUND_STEPS} needed to compare it)")
    reach, unfreeze = int(finalist_seconds / per_step), int(unfreeze_at * full["steps_planned"])
    if reach < unfreeze:
        return (f"the halving ends by step {reach}, before tail first unfreezes (step {unfreeze}): "
                "it would compare the frozen tail alone")
    return ""


def untrained_start(run: AutoRun, dropped: list[dict]) -> dict:
    """Where no arm can train in the budget, the submission is the best start as it is: the
    highest step-0 validation PSNR among the starts whose end fits in the time left, if it beats
    bicubic (on minicomp none does: Real-ESRGAN's starts sharpen for the eye, not for PSNR).
    Otherwise the submission is bicubic, and the record says what budget would train a start."""
    left = run.clock.left()
    scored = [c for c in run.journal["candidates"]["candidates"] if c.get("psnr0") is not None]
    ends = {c["name"]: reserve_after_training(run, 1, False, starts=[c]) for c in scored}
    bicubic = run.journal["candidates"]["bicubic_psnr"]
    fitting = [c for c in scored if ends[c["name"]] <= left and c["psnr0"] > bicubic]
    why = "no arm can train in this budget" + (
        " (" + "; ".join(f"{d['name']}: {d['why']}" for d in dropped) + ")" if dropped else "")
    short = "no arm can train in this budget (see dropped)"
    if not fitting:
        fastest = min(scored, key=lambda c: ends[c["name"]], default=None)
        need = "" if fastest is None else (
            f"; --budget {math.ceil((run.clock.elapsed() + ends[fastest['name']] / END_SHARE) / 60) + 1}m "
            f"would give {fastest['name']} (its end ~{ends[fastest['name']] / 60:.1f} min) some training")
        reason = (f"{why}, and no start as it is fits in the {max(left, 0) / 60:.1f} min left and "
                  f"beats bicubic ({bicubic:.3f} dB on validation){need}")
        run.say(f"  {reason}: the submission is bicubic (--resume with a larger --budget keeps "
                "what is measured and probes again)")
        return {"arms": [], "dropped": dropped, "training_seconds": 0.0, "probe_steps": 0,
                "bicubic": reason, "budget": run.clock.budget}
    best = max(fitting, key=lambda c: c["psnr0"])
    run.say(f"  {why}: {best['name']} predicts as it is (step-0 validation PSNR {best['psnr0']:.3f} dB, "
            f"bicubic {bicubic:.3f})")
    arm = {**best, "name": f"{best['name']}-untrained", "variant": "untrained", "steps_planned": 0}
    return {"arms": [arm], "dropped": dropped, "training_seconds": 0.0, "probe_steps": 0,
            "untrained": short}


def bicubic_end(run: AutoRun) -> dict:
    """The end where nothing beats bicubic in the time: bicubic itself, its validation PSNR."""
    bicubic = run.journal["candidates"]["bicubic_psnr"]
    return {"models": [BICUBIC], "dtype": _FP32["dtype"], "weights": [1.0],
            "weights_by_group": {"keep": False, "why": "bicubic"}, "val_psnr": bicubic,
            "val_psnr_models": [bicubic], "bicubic_psnr": bicubic, "self_ensemble": 0,
            "refine": {"keep": False, "why": "bicubic"}}


def _trains(arm: dict) -> bool:
    return arm["variant"] != "untrained"


def _probe(run: AutoRun, cand: dict, variant: dict, steps: int, seconds: float, min_side: int,
           starts: int, known: dict | None) -> dict:
    """One arm measured: a range test of ``steps`` (its rate and its step time; with a
    ``known`` arm of the same start, or fewer than ``RANGE_STEPS`` affordable, a few steps at a
    known rate time it), the faster memory layout, then its crop, batch and schedule for the
    time it would get if it won; a preset from scratch too slow at the first timing is left
    there (``SCRATCH_SLACK``)."""
    from upres.training.lr_find import range_test

    scratch = variant["variant"] == "scratch"
    arm = {**cand, **variant, "name": f"{cand['name']}-{variant['variant']}", "crop": 64,
           "batch": 4, "lr": DEFAULT_LR[scratch], "ema": 0.99, "checkpoint_every": 50}
    if known:  # the layout the same start measured faster
        arm["channels_last"], arm["layout"] = known["channels_last"], known["layout"]
    folder = run.out / "probes" / arm["name"]
    lr = known["lr"] if known else None
    if lr is None and steps >= RANGE_STEPS:
        low, high = (1e-5, 1e-2) if scratch else (1e-6, 3e-3)
        test = range_test(arm_config(run, arm, steps), folder, steps, low, high, progress=False)
        arm["lr"], arm["range_test"] = range_rate(test.suggestion, scratch)
        arm["range_test"]["steps"] = len(test.lrs)
    else:
        arm["lr"] = lr or arm["lr"]
        rate = arm["lr"]
        test = range_test(arm_config(run, arm, 5), folder, 5, rate, rate * 1.0001, progress=False)
        arm["range_test"] = {"skipped": "the full fine-tune's rate" if lr else
                             f"{steps} steps affordable ({RANGE_STEPS} needed): the usual rate"}
    per_step, share = test.seconds_per_step, won_seconds(seconds, starts)
    if scratch and SCRATCH_SLACK * share / per_step < SCRATCH_MIN_STEPS:
        # at its smallest crop and batch: no layout or size can give it the steps
        return {**arm, "steps_planned": int(share / per_step), "seconds_per_step": round(per_step, 4)}
    if not known:
        arm.update(_layout(run, arm, folder, per_step))
        per_step = arm["layout"]["channels_last"] if arm["channels_last"] else per_step
    probe_pixels = arm["batch"] * arm["crop"] ** 2
    if known:  # the same start's fitted costs, scaled by how this arm's probe step compares
        ratio = per_step / known["timing"]["probe_seconds"]
        model = (known["timing"]["overhead"] * ratio, known["timing"]["per_pixel"] * ratio)
        timed = list(known["timing"]["timed"])
    else:
        timed = [[arm["crop"], arm["batch"], round(per_step, 4)]]
        model = _step_model([(probe_pixels, per_step)])
        for attempt in range(SIZE_TIMINGS):  # time the size it would train at, until it is timed
            guess = _sized(arm, model, share, min_side, run.scale)
            pixels = guess["batch"] * guess["crop"] ** 2
            if pixels <= 1.5 * max(b * c ** 2 for c, b, _ in timed):  # within what was timed
                break
            run.say(f"  {arm['name']}: timing crop {guess['crop']} x batch {guess['batch']}")
            test = range_test(arm_config(run, {**arm, **guess}, 5), folder / f"sized{attempt}", 5,
                              arm["lr"], arm["lr"] * 1.0001, progress=False)
            timed.append([guess["crop"], guess["batch"], round(test.seconds_per_step, 4)])
            largest = sorted(timed, key=lambda t: t[0] ** 2 * t[1])[-2:]  # the slope near the top
            model = _step_model([(b * c ** 2, t) for c, b, t in largest])
    arm.update(_sized(arm, model, share, min_side, run.scale))
    arm["timing"] = {"probe_seconds": per_step, "overhead": model[0], "per_pixel": model[1],
                     "timed": timed}
    return arm


def won_seconds(seconds: float, starts: int) -> float:
    """The training time an arm gets if it wins: its share of halving and the final, less what
    the runner-up's specialist may take of the final (``LEVER_SHARE``). Without that, on other6
    at 30m the winner trained 676 and 726 s of the 1033 and 1081 s planned, and at 1081 s the
    plan chose crop 128 for 322 steps, of which it reached 176 (at 1033 s: crop 96, 285)."""
    return seconds * ((1 - HALVING_SHARE) * (1 - LEVER_SHARE) + HALVING_SHARE / max(starts, 1))


def range_rate(suggestion: float, scratch: bool) -> tuple[float, dict]:
    """The rate a range test's suggestion gives (clipped), and its record; under a tenth of the
    usual rate the loss rose from the test's first steps, and the usual rate stays."""
    record = {"suggestion": suggestion}
    if suggestion < DEFAULT_LR[scratch] / 10:
        record["distrusted"] = f"{suggestion:.1e} is under a tenth of {DEFAULT_LR[scratch]:.0e}"
        return DEFAULT_LR[scratch], record
    return float(np.clip(suggestion, 1e-5, 2e-3 if scratch else 1e-3)), record


def _layout(run: AutoRun, arm: dict, folder: Path, nchw_seconds: float) -> dict:
    """channels_last against the default layout, timed over a few steps at the arm's rate: kept
    where a step is ``LAYOUT_GAIN`` faster (x4plus in bf16 on a CPU with AMX: 0.48 against
    0.59 s a step at crop 64 x batch 8)."""
    from upres.training.lr_find import range_test

    rate = arm["lr"]
    test = range_test(arm_config(run, {**arm, "channels_last": True}, 5), folder / "channels_last",
                      5, rate, rate * 1.0001, progress=False)
    faster = test.seconds_per_step < (1 - LAYOUT_GAIN) * nchw_seconds
    # to the microsecond: at 3 decimals a 16 ms step on tiny data no longer shows why it was chosen
    return {"channels_last": bool(faster),
            "layout": {"nchw": round(nchw_seconds, 6), "channels_last": round(test.seconds_per_step, 6)}}


def _param_names(cand: dict) -> list[str]:
    """The parameter names of a start's network (built on the meta device)."""
    import torch

    from upres.models import registry

    if cand.get("preset"):
        return []
    with torch.device("meta"):
        model = registry.build_model(cand["arch"], cand["hparams"])
    return [n for n, _ in model.named_parameters()]


def _step_model(timed: list[tuple[int, float]]) -> tuple[float, float]:
    """Seconds a training step takes as ``overhead + per_pixel * pixels`` (HR pixels in the
    batch), fitted to steps timed at different sizes. The overhead (optimizer and EMA over every
    weight, loading) is why pixels alone mislead: x4plus in bf16 on a CPU with AMX took 0.82 s a
    step at crop 64 x batch 4 and 1.86 s, not 3.7, at 96 x 8. One timing: no overhead."""
    pixels = np.array([p for p, _ in timed], dtype=float)
    seconds = np.array([t for _, t in timed], dtype=float)
    if len(set(pixels)) < 2:
        return 0.0, float(seconds.mean() / pixels.mean())
    per_pixel, overhead = np.polyfit(pixels, seconds, 1)
    if per_pixel <= 0 or overhead < 0:  # noise, or a cost per pixel growing with the size:
        # keep the costlier linear reading
        return 0.0, float(np.max(seconds / pixels))
    return float(overhead), float(per_pixel)


def _sized(arm: dict, model: tuple[float, float], seconds: float, min_side: int, scale: int) -> dict:
    """Crop and batch from the step-time ``model`` (``_step_model``): the most HR pixels per step
    that still give ``MIN_STEPS`` in the arm's time, crops of at least 64 that fit the smallest
    image, batches of at least 4; the EMA and checkpoint interval follow the steps."""
    overhead, per_pixel = model
    pixels = (seconds / MIN_STEPS - overhead) / per_pixel
    least = min(64, min_side // (4 * scale) * 4 * scale) or 4 * scale  # crops of 64, batches of 4
    options = [(c, b) for c in (32, 48, 64, 96, 128, 192, 256) for b in (4, 8, 16, 32)
               if least <= c <= min_side and c % (4 * scale) == 0] or [(least, 4)]
    fitting = [o for o in options if o[0] ** 2 * o[1] <= pixels] or [min(options)]
    crop, batch = max(fitting, key=lambda o: (o[0] ** 2 * o[1], o[1] >= 4, o[0]))
    step = overhead + per_pixel * crop ** 2 * batch
    steps = int(seconds / step)
    return {"crop": crop, "batch": batch, "seconds_per_step": round(step, 3),
            "steps_planned": steps, "ema": 0.99 if steps < 2000 else 0.999,
            "checkpoint_every": max(5, int(60 / step))}


# --------------------------------------------------------------------------- training


def _arm_psnr(run: AutoRun, name: str) -> tuple[float, int]:
    """An arm's latest validation PSNR and step, from its metrics."""
    scores = [(r["val_psnr"], r["step"]) for r in _metrics(run.out / "arms" / name)
              if "val_psnr" in r]
    return scores[-1] if scores else (-math.inf, 0)


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return read_jsonl(path) if path.exists() else []


def _train_arm(run: AutoRun, arm: dict, seconds: float, iterations: int, midway: bool = False) -> None:
    """Continue an arm's training for ``seconds`` (at most ``iterations`` steps in all), ending
    with a validation (and one ``midway``, for the slope ``training_value`` reads); every rank
    trains, rank 0 writes."""
    from upres.training.loop import train

    vals, extra = 1, []
    if midway:  # at 60% of the round's steps past where it resumes: a faster round than
        # planned still validates twice, not three times (validation falls on multiples of
        # val_every counted from step 0: round 2 at 60m on minicomp resumed at step 35 with
        # val_every 39 and validated at 39, 78 and 105); the steps of its training time, not
        # of the round's (on 512x512 pairs a 2-minute round held 84 s of training after the
        # time reserved for its two validations, and 60% of 2 minutes fell on its last step but one)
        vals = 2
        half = 0.6 * (seconds - vals * _training_val_seconds(run, arm)) / arm["seconds_per_step"]
        resumed_at = run.shard.broadcast(_arm_psnr(run, arm["name"])[1])  # as rank 0 reads it
        extra = [f"train.val_every={resumed_at + max(int(half), 1)}"]
    cfg = arm_config(run, arm, iterations, seconds - vals * _training_val_seconds(run, arm), extra)
    train(cfg, run.out / "arms" / arm["name"], resume="auto",
          command=["upres", "auto", arm["name"]], progress=run.options.progress)


def run_halving(run: AutoRun) -> None:
    """Successive halving: every arm trains a round, the better half (by validation PSNR) goes
    on to a round twice as long, until one is left; rounds are recorded as they end, so a
    resumed run skips them."""
    arms = {a["name"]: a for a in run.journal["probes"]["arms"]}
    record = run.journal.data["phases"].setdefault(
        "halving", {"rounds": [], "alive": list(arms), "began": round(run.clock.elapsed(), 2)})
    if "winner" in record:
        return
    n = len(arms)
    rounds = max(1, math.ceil(math.log2(n))) if n > 1 else 0
    first = HALVING_SHARE * run.journal["probes"]["training_seconds"] / max(rounds * n, 1)
    while len(record["rounds"]) < rounds and len(record["alive"]) > 1:
        r = len(record["rounds"])
        seconds = first * 2 ** r
        run.say(f"[{_minutes(run.clock.elapsed())}] halving round {r + 1} of {rounds}: "
                f"{len(record['alive'])} arms x {seconds / 60:.1f} min")
        done = record.setdefault("current", {})
        for name in record["alive"]:
            if name not in done:
                _train_arm(run, arms[name], seconds, _horizon(arms[name]), midway=True)
                psnr = round(_arm_psnr(run, name)[0], 4) if run.shard.main else None
                done[name] = run.shard.broadcast(psnr)
                run.journal.save(run.clock)
        ranked = sorted(record["alive"], key=lambda a: -done[a])
        record["rounds"].append({"seconds": round(seconds, 1), "psnr": dict(done),
                                 "kept": ranked[:math.ceil(len(ranked) / 2)]})
        record["alive"] = ranked[:math.ceil(len(ranked) / 2)]
        record.pop("current")
        run.journal.save(run.clock)
    last = record["rounds"][-1]["psnr"] if record["rounds"] else {}
    ranked = sorted(last, key=lambda a: -last[a]) or record["alive"]
    record["winner"], record["runner_up"] = ranked[0], (ranked[1] if len(ranked) > 1 else None)
    record["seconds"] = round(run.clock.elapsed() - record["began"], 2)
    run.journal.save(run.clock)
    run.say(f"  winner {record['winner']}" + (f" (runner-up {record['runner_up']})"
                                              if record["runner_up"] else ""))


def _horizon(arm: dict) -> int:
    """The steps of an arm's cosine schedule: what it would train if it won."""
    return max(int(arm["steps_planned"]), 10)


def _best_weights(run: AutoRun, name: str) -> Path | str | None:
    """An arm's best weights so far (its start before it trained; None for a preset that has
    not trained yet)."""
    path = run.out / "arms" / name / "best.safetensors"
    if path.exists():
        return path
    return next(a.get("source") for a in run.journal["probes"]["arms"] if a["name"] == name)


def training_value(run: AutoRun) -> dict:
    """What the winner's final training would lose if a lever took ``c`` of its seconds: its
    validation PSNR fitted as ``a + b ln(step)`` by least squares over all its validations (a
    halving round validates at its middle and its end), so the loss is ``b ln(S / S')`` for the
    final's end step ``S`` and the ``S'`` it reaches ``c`` seconds sooner. Where the slope cannot
    be read, ``b`` is None and a lever may take at most ``LEVER_SHARE`` of the final. The last two
    validations alone undervalued training: on other6 at 30m (6 validation pairs) they read
    0.092 dB per e-fold (0.029 dB between steps 87 and 119), the fit over all four 0.145; priced
    at 0.092, x8 self-ensemble took the final down to step 141 and gained 0.109 dB on the test
    pairs, where the same start trained to step 300 in the previous run scored 0.145 dB above
    it (0.19 per e-fold)."""
    halving = run.journal["halving"]
    arm = next(a for a in run.journal["probes"]["arms"] if a["name"] == halving["winner"])
    records = _metrics(run.out / "arms" / arm["name"])
    scores = sorted({r["step"]: r["val_psnr"] for r in records if "val_psnr" in r and r["step"] > 0}.items())
    rates = [r["it_per_s"] for r in records if "it_per_s" in r]
    rate = float(np.median(rates)) if rates else 1 / arm["seconds_per_step"] if _trains(arm) else 0.0
    step = max((r["step"] for r in records), default=0)
    seconds = max(run.clock.left() - reserve_after_training(run, 1, False), 0.0)
    value = {"from_step": step, "steps_per_second": round(rate, 4), "final_seconds": round(seconds, 1),
             "slope_db_per_log_step": None if _trains(arm) else 0.0}  # untrained: nothing to lose
    slope = log_step_slope(scores)
    if slope is not None:
        value["slope_db_per_log_step"] = round(slope, 4)
        value["points"] = [[s, round(p, 4)] for s, p in scores]
    return value


def log_step_slope(scores: list[tuple[int, float]]) -> float | None:
    """``b`` of ``psnr = a + b ln(step)`` fitted by least squares to (step, psnr) pairs in step
    order, at least 0; None where their steps span less than ``MIN_STEP_RATIO``."""
    if not scores or scores[-1][0] < MIN_STEP_RATIO * scores[0][0]:
        return None
    steps, psnrs = np.log([s for s, _ in scores]), np.array([p for _, p in scores])
    return max(float(np.polyfit(steps, psnrs, 1)[0]), 0.0)


def training_loss(value: dict, cost: float) -> float:
    """Validation dB the final would lose by training ``cost`` seconds less (``training_value``);
    infinite where the cost takes the whole final, or more than ``LEVER_SHARE`` of it where the
    slope is unknown."""
    seconds, slope = value["final_seconds"], value["slope_db_per_log_step"]
    if cost >= seconds or (slope is None and cost > LEVER_SHARE * seconds):
        return math.inf
    if slope is None or cost <= 0:
        return 0.0
    start, rate = max(value["from_step"], 1), value["steps_per_second"]
    return slope * math.log((start + rate * seconds) / (start + rate * (seconds - cost)))


def measure_levers(run: AutoRun) -> dict:
    """What self-ensemble (of 2, 4 or 8 flips/rotations) and an ensemble with the runner-up buy
    on validation, with the arms' weights after halving and after the refinement the end would
    choose (the two overlap: on known6 x8 gained 0.124 dB on test alone, 0.066 after refinement),
    against what their test-time cost would take from the final's training
    (``training_value``): a lever is kept where its gain less that loss is ``KEEP_DB`` or more;
    of the self-ensembles, the one with the largest such net gain."""
    from upres.inference.ensemble import rgb_input
    from upres.inference.upscaler import Upscaler

    halving = run.journal["halving"]
    if _best_weights(run, halving["winner"]) is None:
        why = {"keep": False, "why": "nothing trained yet to measure it on"}
        return {"self_ensemble": why, "ensemble": why}
    value = training_value(run)
    if "points" in value:
        curve = ", ".join(f"{p:.3f} dB at step {s}" for s, p in value["points"])
        run.say(f"  training's price: {curve}: {value['slope_db_per_log_step']:.3f} dB per e-fold "
                "of steps")
    files = val_files(run, run.journal["candidates"]["val_used"])
    measuring = 8 * _val_seconds(run, halving["winner"], end=True)
    levers: dict = {"training": value}
    if measuring > 0.1 * run.clock.left():
        levers["self_ensemble"] = {"keep": False, "why": f"not affordable: measuring it takes "
                                   f"~{measuring / 60:.1f} min of {run.clock.left() / 60:.1f} left"}
    elif why := _unaffordable(value, _test_seconds(run, halving["winner"]), "x2"):
        levers["self_ensemble"] = {"keep": False, "why": why}
    else:
        run.say(f"  self-ensemble: the winner's 8 flips/rotations on {len(files)} validation pairs")
        up = Upscaler(_best_weights(run, halving["winner"]),
                      end_options(run, end_dtype(run, [halving["winner"]]), tile=0))
        lrs = [rgb_input(images.read_image(f["lr"]), f["lr"]) for f in files]
        start = time.perf_counter()  # the passes alone: a conversion is reserved apart
        flips = _flips(up, lrs)
        levers["speed"] = _calibrate(run, time.perf_counter() - start, passes=8)
        levers["self_ensemble"] = _measure_self_ensemble(run, flips, files, lrs, value)
    levers["ensemble"] = _measure_ensemble(run, files, value)
    alone = reserve_after_training(run, 1, False)
    afford_together(levers, lambda transforms: training_loss(
        value, reserve_after_training(run, transforms, True) - alone))
    for name in ("self_ensemble", "ensemble"):
        lever = levers[name]
        label = f"x{lever['transforms']}" if "transforms" in lever else lever.get("what", "")
        run.say(f"  {name.replace('_', '-')}{' ' * bool(label)}{label}: " + (
            f"{lever['gain_db']:+.3f} dB for {lever['test_seconds'] / 60:.1f} min of test time, "
            if "gain_db" in lever else "") + ("kept" if lever["keep"] else f"dropped ({lever['why']})"))
    return levers


def _unaffordable(value: dict, test_pass: float, what: str) -> str | None:
    """Why a lever is not worth measuring: its one extra pass over the test set would take the
    whole final (or more than ``LEVER_SHARE`` of it where the slope is unknown), whatever it
    gains. On big6 on a 2-core CPU without native bf16 (test pass 4.3 min) measuring
    self-ensemble took 2.1 minutes of a 20-minute budget to learn that."""
    if not math.isinf(training_loss(value, test_pass)):
        return None
    share = "" if value["slope_db_per_log_step"] is not None or test_pass >= value["final_seconds"] \
        else f"over {LEVER_SHARE:.0%} of "  # no slope to price it with
    return (f"not affordable: {what} adds a pass over the test set (~{test_pass / 60:.1f} min) "
            f"that would take {share}the final's {value['final_seconds'] / 60:.1f} min of training")


def _flips(up, lrs: list[np.ndarray]) -> list[np.ndarray]:
    """Per LR image (float RGB), an ``Upscaler``'s float predictions of its 8 flips/rotations,
    each turned back: (8, H, W, 3)."""
    from upres.inference.engine import dihedral, dihedral_inverse

    return [np.stack([dihedral_inverse(up.upscale_float(np.ascontiguousarray(dihedral(lr, k, (0, 1)))),
                                       k, (0, 1)) for k in range(8)]) for lr in lrs]


def _refiner_for(run: AutoRun, val):
    """The refinement the end would choose on these predictions (None: not kept)."""
    from upres.degradation.fingerprint import Fingerprint
    from upres.degradation.refine import Refiner
    from upres.inference.ensemble import choose_refinement

    fp = Fingerprint.load(run.out / "fingerprint" / "fingerprint.json")
    if len(fp.groups) < 2 or not fp.classifier:
        return None
    refiner = Refiner(fp)
    chosen = choose_refinement(refiner, val, np.ones(1), val_groups(run, len(val.files)))
    return refiner if chosen["gain_db"] >= KEEP_DB and refiner.enabled else None


def _calibrate(run: AutoRun, seconds: float, passes: int) -> dict:
    """The end's inference as timed now (a trained model, minutes after the step-0 timing that
    the estimates come from) against that estimate: the reserve for the end and the levers'
    test-time costs use the slower of the two (known6 at 30m: the test set took 1.3 to 1.6x
    the estimate, and the run ended 4.8% over its budget)."""
    run.end_speed = 1.0
    estimated = passes * _val_seconds(run, run.journal["halving"]["winner"], end=True)
    run.end_speed = max(1.0, seconds / max(estimated, 1e-9))
    return {"seconds": round(seconds, 3), "estimated_seconds": round(estimated, 3),
            "ratio": round(run.end_speed, 3)}


def _measure_self_ensemble(run: AutoRun, flips: list[np.ndarray], files: list[dict],
                           lrs: list[np.ndarray], value: dict) -> dict:
    """Self-ensembles of 2, 4 and 8 against the plain winner on validation (one pass of the 8
    flips/rotations, ``_flips``, scores all three), after refinement where the end would keep it."""
    from upres.inference.engine import TRANSFORMS
    from upres.inference.ensemble import Validation

    hrs = [images.read_image(f["hr"]) for f in files]
    targets = [images.gray_to_rgb(images.to_float(hr)) for hr in hrs]
    val = Validation(files, [f[:1] for f in flips], targets, hrs, run.scale, [], lrs)
    refiner = _refiner_for(run, val)
    test_pass = _test_seconds(run, run.journal["halving"]["winner"])
    options = {n: Validation(files, [flip[list(ks)].mean(0)[None] for flip in flips], targets, hrs,
                             run.scale, [], lrs).fused_psnr(np.ones(1), refiner)
               for n, ks in [(1, (0,)), *TRANSFORMS.items()]}
    choices = {n: _lever(options[n] - options[1], (n - 1) * test_pass, value, f"x{n} flips/rotations")
               for n in TRANSFORMS}
    best = max(choices, key=lambda n: choices[n]["net_db"])
    return {**choices[best], "transforms": best, "refined": refiner is not None,
            "options": {str(n): {k: choices[n][k] for k in ("gain_db", "test_seconds", "net_db")}
                        for n in choices}}


def afford_together(levers: dict, joint_loss: Callable[[int], float]) -> dict:
    """Self-ensemble and the ensemble may each pay alone, yet together the runner-up runs its
    flips too (on minicomp at 15 minutes the pair took all the winner's final training): both
    stay, with the self-ensemble of 2, 4 or 8 whose gain and the ensemble's less the training
    their joint cost takes (``joint_loss(transforms)``) are largest, where that beats the better
    one alone; else the one with the smaller net gain goes. The best self-ensemble alone may not
    be the best beside the ensemble: on other6 at 30 minutes (o30t) x8 alone netted 0.065 dB but
    did not fit the final with the ensemble, which went, and with it the runner-up's 0.27 dB
    lead on the JPEG group."""
    se, ens = levers["self_ensemble"], levers["ensemble"]
    if not (se.get("keep") and ens.get("keep")):
        return levers
    options = {int(n): o for n, o in se.get("options", {}).items()} or {int(se.get("transforms", 8)): se}
    totals = {n: o["gain_db"] + ens["gain_db"] - joint_loss(n) for n, o in options.items()}
    n = max(totals, key=totals.get)
    if totals[n] >= max(se["net_db"], ens["net_db"]):
        if n != se.get("transforms", n):
            o = options[n]
            se.update(transforms=n, gain_db=o["gain_db"], test_seconds=o["test_seconds"],
                      net_db=o["net_db"], training_loss_db=round(o["gain_db"] - o["net_db"], 4),
                      db_per_minute=round(o["gain_db"] / max(o["test_seconds"] / 60, 1e-9), 4),
                      what=f"x{n} flips/rotations",
                      why=f"kept: beside the ensemble x{n} nets the most ({totals[n]:+.3f} dB together)")
        return levers
    weaker = min((se, ens), key=lambda lever: lever["net_db"])
    weaker.update(keep=False, why=f"pays alone, but with the other lever the final would train "
                  f"{joint_loss(n):.3f} dB less; together they gain less than the other alone")
    return levers


def _lever(gain: float, cost: float, value: dict, what: str) -> dict:
    """A lever's validation gain against the training its test-time ``cost`` takes."""
    gain, loss = float(gain), training_loss(value, cost)
    net = gain - loss
    keep = bool(net >= KEEP_DB)
    why = ("kept" if keep else f"gain {gain:+.3f} dB below {KEEP_DB}" if gain < KEEP_DB
           else "too slow for the time left" if math.isinf(loss)
           else f"gain {gain:+.3f} dB, but its time would cost the training {loss:.3f} dB")
    return {"keep": keep, "gain_db": round(gain, 4), "test_seconds": round(cost, 1),
            "training_loss_db": round(loss, 4) if math.isfinite(loss) else None,
            "net_db": round(net, 4) if math.isfinite(net) else -1e9,
            "db_per_minute": round(gain / max(cost / 60, 1e-9), 4), "what": what, "why": why}


def _measure_ensemble(run: AutoRun, files: list[dict], value: dict) -> dict:
    """Soft voting of the winner and the runner-up, weights fitted on validation."""
    from upres.inference.ensemble import Predictor, fit_coefficients

    halving = run.journal["halving"]
    if not halving.get("runner_up"):
        return {"keep": False, "why": "one arm only"}
    extra = _test_seconds(run, halving["runner_up"])  # the runner-up's pass over the test set
    if why := _unaffordable(value, extra, "the runner-up"):
        return {"keep": False, "why": why}
    options = end_options(run, end_dtype(run, [halving["winner"], halving["runner_up"]]), tile=0)
    predictor = Predictor([_best_weights(run, halving["winner"]),
                           _best_weights(run, halving["runner_up"])], options)
    val = predictor.validate_files(files, run.scale)
    weights = fit_coefficients(val.preds, val.targets)
    alone = val.model(0)
    refiner = _refiner_for(run, alone)  # what the fusion adds beyond the refinement
    gain = val.fused_psnr(weights, refiner) - alone.fused_psnr(np.ones(1), refiner)
    result = _lever(gain, extra, value, "winner + runner-up")
    return {**result, "weights": [round(float(w), 4) for w in weights], "refined": refiner is not None,
            "runner_up_leads": runner_up_leads(run, val)}


def runner_up_leads(run: AutoRun, val) -> dict[str, float]:
    """The fingerprint groups whose validation pairs the runner-up alone scores higher than the
    winner alone (by ``KEEP_DB``), with that lead in dB: where a start suits a recipe that the
    winner's does not (x4plus saw JPEG in its pretraining, RealSR did not), a specialist of the
    runner-up trains on those groups in the final (``train_specialist``)."""
    from upres.inference.ensemble import to_image
    from upres.scoring import metrics

    groups = val_groups(run, len(val.files))
    leads: dict[int, list[float]] = {}
    for k, group in enumerate(groups or []):
        hr = val.hr[k]
        winner, runner_up = (metrics.psnr(to_image(p, hr), hr, val.border) for p in val.preds[k][:2])
        leads.setdefault(group, []).append(runner_up - winner)
    return {str(g): round(float(np.mean(d)), 4) for g, d in sorted(leads.items()) if np.mean(d) >= KEEP_DB}


def run_final(run: AutoRun) -> None:
    """The winner trains on for the time left after the reserve for the end, its cosine
    schedule stretched to end with that time (from its measured speed, ``FINAL_OVERSHOOT``
    long so that the time, not the steps, ends it; ``PROBE_OVERSHOOT`` from the probe's)."""
    record = run.journal.data["phases"].setdefault("final", {"began": round(run.clock.elapsed(), 2)})
    if record.get("done"):
        return
    halving, levers = run.journal["halving"], run.journal["levers"]
    arm = next(a for a in run.journal["probes"]["arms"] if a["name"] == halving["winner"])
    if not _trains(arm):
        record.update(done=True, untrained=True, psnr=arm["psnr0"], seconds=0.0)
        run.journal.save(run.clock)
        return
    if run.shard.main and "test_seconds_per_mp" not in record:
        per_mp = time_on_test_image(run, arm["name"])
        if per_mp is not None:
            record["test_seconds_per_mp"] = round(per_mp, 3)
    if record.get("test_seconds_per_mp"):
        run.test_per_mp[arm["name"]] = record["test_seconds_per_mp"]
    reserve = reserve_after_training(run, _transforms(levers), levers["ensemble"]["keep"])
    if "specialist" not in record:
        record["specialist"] = train_specialist(run, run.clock.left() - reserve)
        run.journal.save(run.clock)
    seconds = run.clock.left() - reserve
    records = _metrics(run.out / "arms" / arm["name"])
    rates = [r["it_per_s"] for r in records if "it_per_s" in r]
    rate = float(np.median(rates)) if rates else 1 / arm["seconds_per_step"]
    overshoot = FINAL_OVERSHOOT if rates else PROBE_OVERSHOOT
    step = max((r["step"] for r in records), default=0)
    iterations = step + int(overshoot * max(seconds - _training_val_seconds(run, arm), 0) * rate)
    # rank 0's plan on every rank: each rank's clock started apart, and DDP ranks that plan
    # different step counts wait on each other for ever
    seconds, iterations = run.shard.broadcast((seconds, iterations))
    record.update(planned_seconds=round(seconds, 1), reserve_seconds=round(reserve, 1),
                  from_step=step, iterations=iterations, rate_from="training" if rates else "probe")
    if iterations > step + 1:
        run.say(f"[{_minutes(run.clock.elapsed())}] final: {arm['name']} trains "
                f"{seconds / 60:.1f} min more, to step {iterations}")
        _train_arm(run, arm, seconds, iterations)
    psnr, reached = _arm_psnr(run, arm["name"]) if run.shard.main else (None, None)
    record.update(done=True, psnr=None if psnr is None else round(psnr, 4), reached_step=reached,
                  seconds=round(run.clock.elapsed() - record["began"], 2))
    run.journal.save(run.clock)


def specialist_plan(run: AutoRun) -> tuple[dict | None, list[int], float, str]:
    """The runner-up's arm, the groups it leads on validation (``runner_up_leads``) and their
    share of the training pairs (at most ``LEVER_SHARE``): what a specialist trains on, and for
    which share of the final; else None and why not."""
    halving, ensemble = run.journal["halving"], run.journal["levers"]["ensemble"]
    arm = next((a for a in run.journal["probes"]["arms"] if a["name"] == halving.get("runner_up")), None)
    groups = [int(g) for g in ensemble.get("runner_up_leads", {})]
    why = ("no ensemble with the runner-up" if arm is None or not ensemble.get("keep")
           else "the runner-up led no recipe group on validation" if not groups
           else "the runner-up does not train" if not _trains(arm)
           else "DATA/val has no recipe groups" if run.journal["split"]["val"] is None
           else "no blind classifier sends test images to groups"
           if run.journal["fingerprint"].get("classifier_accuracy") is None else "")
    if why:
        return None, [], 0.0, why
    held = set(run.journal["split"]["val"])
    train = [g for name, g in run.journal["fingerprint"]["group_of"].items() if name not in held]
    return arm, groups, min(sum(g in groups for g in train) / max(len(train), 1), LEVER_SHARE), ""


def specialist_name(arm: str) -> str:
    return f"{arm}-specialist"


def train_specialist(run: AutoRun, seconds: float) -> dict:
    """A copy of the runner-up trained on the groups it leads, for their share of the final's
    ``seconds`` (less its pass over validation and its conversion at the end), at the runner-up's
    crop, batch and rate: on other6 (o30) 80 s of the x4plus arm on the JPEG group's 8 training pairs
    raised that group's test PSNR by 0.081 dB, 80 s on all 52 pairs by 0.024, and RealSR's
    winner gained 0.143 from a JPEG specialist of its own but stayed 0.36 dB under x4plus's.
    ``decide_end`` uses it on those groups' images where validation rises."""
    from upres.training.loop import train

    arm, groups, share, why = specialist_plan(run)
    if arm is None:
        return {"groups": [], "why": why}
    cost = _val_seconds(run, arm["name"], end=True) + _conversions(run, [arm["name"]], None)
    budget = share * seconds - cost - _training_val_seconds(run, arm)
    rates = [r["it_per_s"] for r in _metrics(run.out / "arms" / arm["name"]) if "it_per_s" in r]
    rate = float(np.median(rates)) if rates else 1 / arm["seconds_per_step"]
    steps = run.shard.broadcast(int(FINAL_OVERSHOOT * budget * rate))
    plan = {"groups": groups, "of": arm["name"], "share": round(share, 4),
            "planned_seconds": round(budget, 1), "iterations": steps}
    if steps < SPECIALIST_STEPS:
        return {**plan, "groups": [], "why": f"{steps} steps in its share (fewer than {SPECIALIST_STEPS})"}
    name = specialist_name(arm["name"])
    run.say(f"[{_minutes(run.clock.elapsed())}] final: {name} trains {budget / 60:.1f} min on "
            f"group{'s' * (len(groups) > 1)} {', '.join(map(str, groups))}, where {arm['name']} led")
    fingerprint = run.out / "fingerprint" / "fingerprint.json"
    cfg = arm_config(run, {**arm, "name": name}, steps, budget, [
        f"init.source={json.dumps(str(_best_weights(run, arm['name'])))}",
        f"data.fingerprint={json.dumps(str(fingerprint))}", f"data.groups={json.dumps(groups)}"])
    train(cfg, run.out / "arms" / name, resume="auto", command=["upres", "auto", name],
          progress=run.options.progress)
    psnr, reached = _arm_psnr(run, name) if run.shard.main else (None, None)
    return {**plan, "name": name, "psnr": None if psnr is None else round(psnr, 4), "reached_step": reached}


def time_on_test_image(run: AutoRun, arm: str) -> float | None:
    """Seconds per MP of the winner as the end will run it, timed on the largest test image
    just before the final's reserve is fixed (None where the test images are not larger than
    the validation ones), unless it is the reference's network, timed there already (fine-tuning
    does not change a network's time). A size factor does not carry over to another network:
    on big6 without native bf16 OpenVINO ran x4plus at 226 s/MP on a 512x512 test image and
    228 on the validation centres, x4plus-anime at ~110 against 66, and the run ended at 21:11
    of 20:00."""
    from upres.inference.ensemble import rgb_input
    from upres.inference.upscaler import Upscaler

    cands = run.journal["candidates"]
    timed = cands.get("test_costs", {}).get("timed")
    if not timed:
        return None
    reference = next(c for c in cands["candidates"] if c["name"] == cands.get("reference", c["name"]))
    start = _start_of(run, arm) or {}
    if [start.get(k) for k in ("arch", "hparams", "preset")] == \
            [reference.get(k) for k in ("arch", "hparams", "preset")]:
        run.say(f"  {arm}: {timed['seconds_per_mp']:.1f} s/MP on {timed['image']}, as timed on "
                f"{reference['name']} (the same network)")
        return timed["seconds_per_mp"]
    image = run.data / "test" / "lr" / timed["image"]
    up = Upscaler(_best_weights(run, arm), end_options(run, end_dtype(run, [arm])))
    lr = rgb_input(images.read_image(image), image)
    run.say(f"  timing {arm} on {image.name}")
    per_mp = timed_pass(up, lr)[0]
    run.say(f"  {image.name}: {per_mp:.1f} s/MP")
    return per_mp


def decide_end(run: AutoRun) -> dict:
    """The final models and weights on validation (per fingerprint group where that raises
    validation PSNR by ``KEEP_DB``), and LR-consistency refinement kept for the groups (and
    label confidences) where it raises validation PSNR."""
    from upres.degradation.fingerprint import Fingerprint
    from upres.degradation.refine import Refiner
    from upres.inference.ensemble import Predictor, choose_refinement, fit_coefficients, fit_group_weights

    halving, levers = run.journal["halving"], run.journal["levers"]
    arms = [halving["winner"]] + ([halving["runner_up"]] if levers["ensemble"]["keep"] else [])
    specialist = run.journal["final"].get("specialist", {})
    fp = Fingerprint.load(run.out / "fingerprint" / "fingerprint.json")
    if specialist.get("name") and len(arms) == 2 and len(fp.groups) > 1 and fp.classifier:
        arms.append(specialist["name"])
    models = [_best_weights(run, arm) for arm in arms]
    dtype = end_dtype(run, arms)
    predictor = Predictor(models, end_options(run, dtype, tile=0))
    val = predictor.validate_files(val_files(run, run.journal["candidates"]["val_used"]), run.scale)
    used, led, label = {}, led_groups(levers), Refiner(fp).label
    if len(models) == 3:
        val, models, used = fit_specialist(val, label, specialist, models, run.say, led)
    three = len(models) == 3  # the specialist on its groups' images, the runner-up elsewhere
    weights = (np.append(fit_coefficients([p[:2] for p in val.preds], val.targets), 0.0) if three
               else fit_coefficients(val.preds, val.targets) if len(models) > 1 else np.ones(1))
    fused, by_group = weights, {"keep": False, "why": "one model"}
    refine = {"keep": False, "why": "the fingerprint has one group"}
    if len(fp.groups) > 1 and fp.classifier:
        if len(models) > 1:
            grouped = (specialist_weights(val, label, weights, specialist["groups"], led=led) if three
                       else fit_group_weights(val, label, weights, priors=led_priors(weights, led)))
            gain = val.fused_psnr(grouped) - val.fused_psnr(weights)
            by_group = {"keep": bool(gain >= KEEP_DB or three), "gain_db": round(gain, 4), "led": led,
                        "weights": {str(g): [round(float(w), 4) for w in c]
                                    for g, c in grouped.by_group.items()}}
            fused = grouped if by_group["keep"] else weights
        refiner = Refiner(fp)
        refine = choose_refinement(refiner, val, fused, val_groups(run, len(val.files)))
        refine["keep"] = refine["gain_db"] >= KEEP_DB and bool(refiner.enabled)
    end = {"models": [str(m) for m in models], "dtype": dtype, "weights": [float(w) for w in weights],
           "weights_by_group": by_group, "val_psnr": round(val.fused_psnr(fused), 4),
           "val_psnr_models": val.psnr, "bicubic_psnr": run.journal["candidates"]["bicubic_psnr"],
           "self_ensemble": _transforms(levers) if _transforms(levers) > 1 else 0, "refine": refine,
           **({"specialist": used} if used else {})}
    return floor_at_bicubic(end, bicubic_end(run), run.say)


def led_groups(levers: dict) -> list[int]:
    """The fingerprint groups whose validation pairs the runner-up alone scored higher than the
    winner alone (``runner_up_leads``)."""
    return [int(g) for g in levers["ensemble"].get("runner_up_leads", {})]


def led_priors(pooled: np.ndarray, led: list[int]) -> dict[int, np.ndarray]:
    """For each group the runner-up ``led``, the pooled weights with the winner's and the
    runner-up's exchanged: what its group fit is shrunk toward (``specialist_weights``)."""
    return {g: np.array([pooled[1], pooled[0], *pooled[2:]], dtype=np.float64) for g in led}


def specialist_weights(val, label, pooled: np.ndarray, groups: list[int], use: bool = True,
                       led: list[int] = ()):
    """Weights per group over (winner, runner-up, specialist): the specialist in place of the
    runner-up for images labelled as one of its ``groups`` where ``use``, the runner-up
    everywhere else. Each group's fit is shrunk by one pair's worth: a group the runner-up
    ``led`` (the specialist's are such) toward the pooled weights with the winner's and the
    runner-up's (or the specialist's) exchanged, the others toward the pooled weights. The
    pooled fit is the other groups', where the winner leads: on other6 (o30s) it gave the
    winner 0.73 in the JPEG group, the test pairs scored best at 0.1-0.15, and the swap took
    that group from 24.12 to 24.22 dB (known6's from 24.99 to 25.00)."""
    from upres.inference.ensemble import fit_group_weights

    moved = {g: np.array([pooled[1], 0.0, pooled[0]]) for g in groups}
    columns = {g: [0, 2] for g in groups} if use else {}
    return fit_group_weights(val, label, pooled, columns, {**led_priors(pooled, led), **moved} if use
                             else led_priors(pooled, led))


def fit_specialist(val, label, specialist: dict, models: list, say: Callable[[str], None],
                   led: list[int] = ()):
    """The validation and models of the end, with the runner-up's specialist where using it on
    its groups raises validation PSNR by ``KEEP_DB``, else without it; and that measure."""
    from upres.inference.ensemble import Validation, fit_coefficients

    pooled = np.append(fit_coefficients([p[:2] for p in val.preds], val.targets), 0.0)
    groups = specialist["groups"]
    with_it = val.fused_psnr(specialist_weights(val, label, pooled, groups, led=led))
    without = val.fused_psnr(specialist_weights(val, label, pooled, groups, use=False, led=led))
    used = {"groups": specialist["groups"], "gain_db": round(with_it - without, 4),
            "keep": bool(with_it - without >= KEEP_DB)}
    say(f"  {specialist['name']} on its groups: {with_it - without:+.3f} dB on validation: "
        + ("kept" if used["keep"] else "dropped"))
    if used["keep"]:
        return val, models, used
    return Validation(val.files, [p[:2] for p in val.preds], val.targets, val.hr, val.border,
                      val.psnr[:2], val.lr_rgb), models[:2], used


def floor_at_bicubic(end: dict, bicubic: dict, say: Callable[[str], None]) -> dict:
    """The chosen end, or bicubic where it scores better on validation (a start trained too
    briefly to pass it); what was set aside is recorded as ``instead_of``."""
    if end["val_psnr"] >= end["bicubic_psnr"]:
        return end
    say(f"  the end scores {end['val_psnr']:.3f} dB on validation, under bicubic's "
        f"{end['bicubic_psnr']:.3f}: the submission is bicubic")
    return {**bicubic, "instead_of": {"models": end["models"], "val_psnr": end["val_psnr"]}}


def end_coefficients(end: dict, fingerprint):
    """The fusion's coefficients that ``decide_end`` chose: per group (labelled by the
    fingerprint's blind classifier) where it kept them, else the pooled fit."""
    from upres.degradation.refine import Refiner
    from upres.inference.ensemble import GroupWeights

    pooled = np.asarray(end["weights"])
    by_group = end.get("weights_by_group") or {}
    if not by_group.get("keep"):
        return pooled
    return GroupWeights(pooled, {int(g): np.asarray(w) for g, w in by_group["weights"].items()},
                        Refiner(fingerprint).label)


def _transforms(levers: dict) -> int:
    """The flips/rotations the test set runs: the self-ensemble's where it is kept, else 1."""
    lever = levers["self_ensemble"]
    return int(lever.get("transforms", 8)) if lever.get("keep") else 1


def submit(run: AutoRun) -> dict:
    """The test set through the chosen models, self-ensemble and refinement (or bicubic, where
    nothing beat it in the time), into ``RUN/submission`` (a folder that appears complete) and
    ``RUN/submission.zip``. A kill after the folder was published leaves one to replace."""
    from upres.inference.submission import write_bicubic, zip_folder

    end, folder = run.journal["end"], run.out / "submission"
    inputs = images.list_images(run.data / "test" / "lr")
    start = time.perf_counter()
    written = (write_bicubic(inputs, folder, run.scale, overwrite=True) if end["models"] == [BICUBIC]
               else _submit_models(run, end, inputs))
    archive = zip_folder(folder, written, overwrite=True)
    return {"images": len(written), "predict_seconds": round(time.perf_counter() - start, 1),
            "folder": str(folder), "zip": str(archive)}


def _submit_models(run: AutoRun, end: dict, inputs: list[Path]) -> list[str]:
    from upres.degradation.fingerprint import Fingerprint
    from upres.degradation.refine import Refiner
    from upres.inference.ensemble import Predictor
    from upres.inference.submission import write_submission

    dtype = end.get("dtype") or run.journal["candidates"].get("precision", _FP32)["dtype"]
    options = end_options(run, dtype, self_ensemble="mean" if end["self_ensemble"] else "off",
                          ensemble_transforms=end["self_ensemble"] or 8)
    predictor = Predictor(end["models"], options)  # files, or a pretrained name left untrained
    fp = Fingerprint.load(run.out / "fingerprint" / "fingerprint.json")
    if end["refine"]["keep"]:
        predictor.refiner = Refiner(fp)
        predictor.refiner.enabled = set(end["refine"]["enabled_groups"])
        predictor.refiner.threshold = end["refine"]["threshold"]
    return write_submission(predictor, end_coefficients(end, fp), inputs, run.out / "submission",
                            run.options.progress, Shard(device=run.shard.device), overwrite=True)
