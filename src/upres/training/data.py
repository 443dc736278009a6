"""Training data: the splits of a data config (pairs and their cache live in ``upres.io.pairs``),
aligned random crops with the 8 dihedral augmentations, and a resumable sampler whose order
depends only on (seed, step).

Every random choice for sample number ``n`` (which pair, where to crop, which flip) comes from
``seed`` and ``n`` alone, so a resumed or multi-process run sees exactly the same batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from upres.errors import DataError, listing
from upres.inference.engine import dihedral
from upres.io.pairs import Pair, PairCache, find_pairs, split_pairs


class CropDataset(Dataset):
    """Indexed by the global sample number ``n``; returns an aligned (LR, HR) crop pair."""

    def __init__(self, cache: PairCache, indices: list[int], crop: int, scale: int, seed: int,
                 hflip: bool = True, rotate: bool = True, groups: list[int] | None = None) -> None:
        self.cache, self.indices, self.crop, self.scale, self.seed = cache, indices, crop, scale, seed
        self.transforms = [k for k in range(8) if (hflip or k < 4) and (rotate or k % 4 == 0)]
        self.n_pairs = len(indices)
        self._perm_epoch, self._perm = -1, None
        self.weights = None  # ``groups`` (one per index): each group drawn equally often
        if groups is not None:
            sizes = np.bincount(groups)
            self.weights = 1.0 / sizes[np.asarray(groups)]
            self.weights /= self.weights.sum()

    def __len__(self) -> int:  # notional; the sampler is infinite
        return self.n_pairs

    def _pair_index(self, n: int) -> int:
        if self.weights is not None:
            pick = np.random.default_rng([self.seed, n, 11]).choice(self.n_pairs, p=self.weights)
            return self.indices[int(pick)]
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
        lr_c, hr_c = dihedral(lr_c, k, (0, 1)), dihedral(hr_c, k, (0, 1))
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
    if data_cfg.val_pairs is not None:
        names = set(data_cfg.val_pairs)
        problems += [f"data.val_pairs: {n!r} is not a pair of {train_lr}"
                     for n in sorted(names - {p.name for p in train})]
        train, val = [p for p in train if p.name not in names], [p for p in train if p.name in names]
    if val_lr and val_hr:
        val, val_problems = find_pairs(val_lr, val_hr)
        problems += val_problems
    elif data_cfg.val_pairs is None:
        if len(train) < 2 and not problems:
            problems.append(f"{train_lr}: at least 2 pairs are needed to split off validation")
        train, val = split_pairs(train, data_cfg.val_split, seed) if len(train) >= 2 else (train, [])
    if any("folder does not exist" in p for p in problems) or (problems and not train):
        raise DataError(f"{len(problems)} problem(s) in the training data:" + listing(problems))
    if data_cfg.val_max_images:
        val = val[:data_cfg.val_max_images]
    return DataSplits(train, val, problems)
