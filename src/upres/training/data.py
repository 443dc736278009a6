"""Training data: LR/HR pairs matched by file name, checked before training, decoded once into
a memory-mapped cache (rebuilt when a source file changes), aligned random crops with the 8
dihedral augmentations, and a resumable sampler whose order depends only on (seed, step).

Every random choice for sample number ``n`` (which pair, where to crop, which flip) comes from
``seed`` and ``n`` alone, so a resumed or multi-process run sees exactly the same batches."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from upres.errors import DataError
from upres.io import images
from upres.io.files import atomic_path, cache_dir


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
    count = min(max(count, 1 if val_split > 0 else 0), len(pairs) - 1)
    order = np.random.default_rng([seed, 1234]).permutation(len(pairs))
    val_idx = set(order[:count].tolist())
    return ([p for i, p in enumerate(pairs) if i not in val_idx],
            [p for i, p in enumerate(pairs) if i in val_idx])


# Bumped when decoding changes (2: EXIF orientation applied), so older entries are not reused.
CACHE_FORMAT = 2


def _stat_key(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def default_cache_dir() -> Path:
    return cache_dir() / "data"


def _check_pair(lr: np.ndarray, hr: np.ndarray, pair: Pair, scale: int) -> list[str]:
    problems = []
    for img, path in ((lr, pair.lr), (hr, pair.hr)):
        if img.dtype != np.uint8:
            problems.append(f"{path}: {img.dtype.itemsize * 8}-bit samples; training expects 8-bit")
        if img.ndim != 3 or img.shape[2] != 3:
            mode = "gray" if img.ndim == 2 else f"{img.shape[2]} channels"
            problems.append(f"{path}: {mode}; training expects RGB")
    mismatch = images.scale_mismatch(lr, hr, scale, pair.lr, pair.hr)
    return problems + ([mismatch] if mismatch else [])


class PairCache:
    """Decoded LR/HR arrays as ``.npy`` files, opened memory-mapped so a crop reads only its rows.

    Entries are keyed by each source file's path, size and mtime: a changed file is decoded again,
    unchanged ones are reused by later runs."""

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
            if not (folder / "done").exists():
                todo.append(pair)
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
            folder.mkdir(parents=True, exist_ok=True)
            for name, arr in (("lr.npy", lr), ("hr.npy", hr)):
                with atomic_path(folder / name) as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, np.ascontiguousarray(arr))
            (folder / "done").write_text(key)
        if problems:
            raise DataError(f"{len(problems)} problem(s) in the training data:\n  "
                            + "\n  ".join(problems))
        self.entries = [(f / "lr.npy", f / "hr.npy") for f in
                        (self._entry_dir(p)[0] for p in self.pairs)]

    def load(self, index: int, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
        lr_path, hr_path = self.entries[index]
        mode = "r" if mmap else None
        return np.load(lr_path, mmap_mode=mode), np.load(hr_path, mmap_mode=mode)


def dihedral_np(img: np.ndarray, k: int) -> np.ndarray:
    """Same transform as ``inference.engine.dihedral`` on HxWxC arrays: flip W if k >= 4, then rot90 k%4."""
    if k >= 4:
        img = img[:, ::-1]
    return np.rot90(img, k % 4, axes=(0, 1))


class CropDataset(Dataset):
    """Indexed by the global sample number ``n``; returns an aligned (LR, HR) crop pair."""

    def __init__(self, cache: PairCache, indices: list[int], crop: int, scale: int, seed: int,
                 hflip: bool = True, rotate: bool = True) -> None:
        self.cache, self.indices, self.crop, self.scale, self.seed = cache, indices, crop, scale, seed
        self.transforms = [k for k in range(8) if (hflip or k < 4) and (rotate or k % 4 == 0)]
        self.n_pairs = len(indices)
        self._perm_epoch, self._perm = -1, None

    def __len__(self) -> int:  # notional; the sampler is infinite
        return self.n_pairs

    def _pair_index(self, n: int) -> int:
        epoch, pos = divmod(n, self.n_pairs)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_pairs)
            self._perm_epoch = epoch
        return self.indices[int(self._perm[pos])]

    def __getitem__(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        lr, hr = self.cache.load(self._pair_index(n))
        rng = np.random.default_rng([self.seed, n, 7])
        lc = self.crop // self.scale
        h, w = lr.shape[:2]
        if h < lc or w < lc:
            raise DataError(f"{self.cache.pairs[self._pair_index(n)].lr}: LR size {w}x{h} is "
                            f"smaller than the LR crop {lc}")
        y, x = int(rng.integers(0, h - lc + 1)), int(rng.integers(0, w - lc + 1))
        s = self.scale
        lr_c = lr[y:y + lc, x:x + lc]
        hr_c = hr[y * s:(y + lc) * s, x * s:(x + lc) * s]
        k = self.transforms[int(rng.integers(len(self.transforms)))]
        lr_c, hr_c = dihedral_np(lr_c, k), dihedral_np(hr_c, k)
        return _to_tensor(lr_c), _to_tensor(hr_c)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255)


class StepSampler(Sampler[int]):
    """Yields sample numbers for steps ``start, start+1, ...``: step ``t`` of the global batch
    ``B * world`` covers numbers ``[t*B*world, (t+1)*B*world)`` and rank ``r`` takes its ``r``-th
    slice of ``B``, so the ranks together see exactly the single-process batch."""

    def __init__(self, batch_size: int, start_step: int = 0, rank: int = 0, world: int = 1,
                 steps: int | None = None) -> None:
        self.batch_size, self.start, self.rank, self.world = batch_size, start_step, rank, world
        self.steps = steps

    def __iter__(self):
        step = self.start
        while self.steps is None or step < self.start + self.steps:
            base = (step * self.world + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)
            step += 1

    def __len__(self) -> int:
        return (self.steps or 2 ** 31) * self.batch_size


@dataclass
class DataSplits:
    train: list[Pair]
    val: list[Pair]
    problems: list[str]  # pairing problems, reported with the decode checks (PairCache)


def resolve_splits(data_cfg, seed: int = 0) -> DataSplits:
    """Train and validation pairs from a competition folder or explicit folders. Pairing problems
    of both splits are returned, so that ``PairCache`` reports them together with the decode
    checks; missing folders raise at once."""
    root = Path(data_cfg.root) if data_cfg.root else None
    train_lr = data_cfg.train_lr or (root / "train" / "lr" if root else None)
    train_hr = data_cfg.train_hr or (root / "train" / "hr" if root else None)
    if train_lr is None or train_hr is None:
        raise DataError("no training data: set data.root (a folder with train/lr and train/hr) "
                        "or data.train_lr and data.train_hr, or pass --data DIR")
    val_lr = data_cfg.val_lr or (root / "val" / "lr" if root and (root / "val").is_dir() else None)
    val_hr = data_cfg.val_hr or (root / "val" / "hr" if root and (root / "val").is_dir() else None)
    train, problems = find_pairs(train_lr, train_hr)
    if val_lr and val_hr:
        val, val_problems = find_pairs(val_lr, val_hr)
        problems += val_problems
    else:
        if len(train) < 2 and not problems:
            problems.append(f"{train_lr}: at least 2 pairs are needed to split off validation")
        train, val = split_pairs(train, data_cfg.val_split, seed) if len(train) >= 2 else (train, [])
    if any("folder does not exist" in p for p in problems) or (problems and not train):
        raise DataError(f"{len(problems)} problem(s) in the training data:\n  " + "\n  ".join(problems))
    if data_cfg.val_max_images:
        val = val[:data_cfg.val_max_images]
    return DataSplits(train, val, problems)
