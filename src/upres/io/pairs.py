"""LR/HR pairs on disk: matched by file name, split deterministically, checked (modes, bit
depth, exact scale) and decoded once into a memory-mapped cache that later runs reuse and that
rebuilds an entry when a source file changes. Torch-free: training, fingerprints and ``auto``
read pairs through it."""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from upres.errors import DataError, listing
from upres.io import images
from upres.io.files import atomic_path, cache_dir, files_sha256


@dataclass(frozen=True)
class Pair:
    name: str
    lr: Path
    hr: Path


def find_pairs(lr_dir: str | Path, hr_dir: str | Path) -> tuple[list[Pair], list[str]]:
    """Pairs matched by file stem, and the problems found (missing partners, missing folders)."""
    lr_dir, hr_dir = Path(lr_dir), Path(hr_dir)
    problems = [f"{d}: folder does not exist" for d in (lr_dir, hr_dir) if not d.is_dir()]
    if problems:
        return [], problems
    lrs = {p.stem: p for p in images.list_images(lr_dir)}
    hrs = {p.stem: p for p in images.list_images(hr_dir)}
    problems += [f"{lrs[s]}: no HR partner in {hr_dir}" for s in sorted(set(lrs) - set(hrs))]
    problems += [f"{hrs[s]}: no LR partner in {lr_dir}" for s in sorted(set(hrs) - set(lrs))]
    pairs = [Pair(s, lrs[s], hrs[s]) for s in sorted(set(lrs) & set(hrs))]
    if not pairs and not problems:
        problems.append(f"{lr_dir}: no images")
    return pairs, problems


def split_pairs(pairs: list[Pair], val_split: float, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """A deterministic validation split: ``val_split`` < 1 is a fraction, >= 1 a count."""
    count = round(len(pairs) * val_split) if val_split < 1 else int(val_split)
    count = max(count, 1 if val_split > 0 else 0)
    if count >= len(pairs):
        raise DataError(f"data.val_split {val_split:g} holds out {count} of {len(pairs)} pairs, "
                        "leaving none to train on")
    order = np.random.default_rng([seed, 1234]).permutation(len(pairs))
    val_idx = set(order[:count].tolist())
    return ([p for i, p in enumerate(pairs) if i not in val_idx],
            [p for i, p in enumerate(pairs) if i in val_idx])


# Bumped when decoding changes (2: EXIF orientation applied), so older entries are not reused.
CACHE_FORMAT = 3  # 3: each entry records its sources' and its own sha256


def _stat_key(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def default_cache_dir() -> Path:
    return cache_dir() / "data"


def _entry_intact(folder: Path, key: str) -> bool:
    """Whether a cache entry is the one its ``done`` describes: made for this key (these source
    files), its arrays the bytes it recorded; if not, a warning names it (it is decoded again)."""
    try:
        record = json.loads((folder / "done").read_text())
        if record.get("key") != key:
            why = "it was made from other files"
        elif any(record.get(name) != files_sha256(folder / name) for name in ("lr.npy", "hr.npy")):
            why = "its arrays do not match their recorded sha256 (edited or cut short)"
        else:
            return True
    except (OSError, ValueError, AttributeError):
        why = "its record is unreadable"
    warnings.warn(f"{folder}: damaged image cache entry ({why}); decoding again", stacklevel=4)
    return False


def check_sizes(cache: PairCache, indices: list[int], least_lr: int, what: str) -> list[str]:
    """The pairs whose LR is smaller than ``least_lr`` on a side (``what`` says what needs it)."""
    problems = []
    for i in indices:
        h, w = cache.load(i)[0].shape[:2]
        if min(h, w) < least_lr:
            problems.append(f"{cache.pairs[i].lr}: {w}x{h} is smaller than {what}")
    return problems


def _check_pair(lr: np.ndarray, hr: np.ndarray, pair: Pair, scale: int) -> list[str]:
    problems = []
    for img, path in ((lr, pair.lr), (hr, pair.hr)):
        if img.dtype != np.uint8:
            problems.append(f"{path}: {img.dtype.itemsize * 8}-bit samples; training expects 8-bit")
        if img.ndim == 3 and img.shape[2] != 3:
            problems.append(f"{path}: {img.shape[2]} channels; training expects RGB (or gray)")
    mismatch = images.scale_mismatch(lr, hr, scale, pair.lr, pair.hr)
    return problems + ([mismatch] if mismatch else [])


class PairCache:
    """Decoded LR/HR arrays as ``.npy`` files, opened memory-mapped so a crop reads only its rows.

    Entries are found by each source file's path, size and mtime: a changed file is decoded again,
    unchanged ones are reused by later runs. An entry's ``done`` records its key, its sources'
    sha256 and its arrays'; an entry whose arrays were edited, cut short or copied from another
    pair is named in a warning and decoded again, never used."""

    def __init__(self, pairs: list[Pair], scale: int, cache_dir: str | Path | None = None,
                 progress: bool = True, known_problems: list[str] | None = None) -> None:
        self.pairs = pairs
        self.scale = scale
        self.root = Path(cache_dir) if cache_dir else default_cache_dir()
        self.entries: list[tuple[Path, Path]] = []
        self._build(progress, list(known_problems or []))

    def _entry_dir(self, pair: Pair) -> tuple[Path, str]:
        key = json.dumps([CACHE_FORMAT, _stat_key(pair.lr), _stat_key(pair.hr)])
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        return self.root / digest[:2] / digest, key

    def _build(self, progress: bool, problems: list[str]) -> None:
        from tqdm import tqdm

        todo = []
        for pair in self.pairs:
            folder, key = self._entry_dir(pair)
            if not (folder / "done").exists() or not _entry_intact(folder, key):
                todo.append(pair)
                continue
            lr, hr = (np.load(folder / name, mmap_mode="r") for name in ("lr.npy", "hr.npy"))
            mismatch = images.scale_mismatch(lr, hr, self.scale, pair.lr, pair.hr)
            if mismatch:  # decoded for another scale earlier: the pair does not fit this one
                problems.append(mismatch)
        bar = tqdm(todo, desc="decoding images into the cache", unit="pair",
                   disable=not progress or not todo)
        for pair in bar:
            folder, key = self._entry_dir(pair)
            try:
                lr, hr = images.read_image(pair.lr), images.read_image(pair.hr)
            except images.ImageError as err:
                problems.append(str(err))
                continue
            found = _check_pair(lr, hr, pair, self.scale)
            if found:
                problems += found
                continue
            # a gray image trains as RGB with three equal channels (as BasicSR reads it)
            lr, hr = images.gray_to_rgb(lr), images.gray_to_rgb(hr)
            folder.mkdir(parents=True, exist_ok=True)
            record = {"key": key, "sources": [files_sha256(pair.lr), files_sha256(pair.hr)]}
            for name, arr in (("lr.npy", lr), ("hr.npy", hr)):
                with atomic_path(folder / name) as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, np.ascontiguousarray(arr))
                    record[name] = files_sha256(tmp)
            with atomic_path(folder / "done") as tmp:
                tmp.write_text(json.dumps(record))
        if problems:
            raise DataError(f"{len(problems)} problem(s) in the training data:"
                            + listing(problems))
        self.entries = [(f / "lr.npy", f / "hr.npy") for f in
                        (self._entry_dir(p)[0] for p in self.pairs)]

    def load(self, index: int, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
        lr_path, hr_path = self.entries[index]
        mode = "r" if mmap else None
        return np.load(lr_path, mmap_mode=mode), np.load(hr_path, mmap_mode=mode)
