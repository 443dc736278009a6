"""The tile engine: host arrays in, host arrays out, for any callable model (a PyTorch module on
its device, an OpenVINO compiled model, ...) described by a ``ModelDescriptor``. Seamless
overlapping tiles run in batches, padding to the model's size multiple, and the geometric
self-ensemble (8 flips/rotations, mean or median), which works tile by tile. It never loads
files, knows about image modes or imports PyTorch."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from upres.errors import InferenceError
from upres.models.descriptor import ModelDescriptor

SelfEnsemble = Literal["off", "mean", "median"]
# The flips/rotations a self-ensemble of 2, 4 or 8 runs (``dihedral``'s k): the smaller sets keep
# the image's shape, so a non-square tile batches them together. On known6 test images x4plus
# fine-tuned gained +0.064, +0.102 and +0.124 dB with 2, 4 and 8.
TRANSFORMS = {2: (0, 4), 4: (0, 2, 4, 6), 8: tuple(range(8))}
Progress = Callable[[int, int], None]
Model = Callable[[np.ndarray], np.ndarray]  # (N, C, H, W) float32 -> (N, C_out, sH, sW) float32


# --------------------------------------------------------------------------- geometry


def dihedral(x: np.ndarray, k: int, axes: tuple[int, int] = (-2, -1)) -> np.ndarray:
    """The k-th of the 8 flips/rotations (k in 0..7) over the (height, width) ``axes``: the
    width flipped for k >= 4, then turned k % 4 times. Training augmentation uses the same."""
    if k >= 4:
        x = np.flip(x, axes[1])
    return np.rot90(x, k % 4, axes=axes)


def dihedral_inverse(x: np.ndarray, k: int, axes: tuple[int, int] = (-2, -1)) -> np.ndarray:
    x = np.rot90(x, -(k % 4), axes=axes)
    return np.flip(x, axes[1]) if k >= 4 else x


def tile_starts(size: int, tile: int, overlap: int, count: int | None = None) -> list[int]:
    """Evenly spread starts of equal tiles covering ``size``, neighbours overlapping >= overlap
    (``count`` tiles if given, else as few as that takes)."""
    if tile >= size:
        return [0]
    n = count or -(-(size - overlap) // (tile - overlap))
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def tile_ramps(starts: list[int], tile: int) -> list[np.ndarray]:
    """1-D blending ramps per tile. Where two tiles overlap by ``ov``, each keeps the half nearer
    its own centre and the hand-over is a linear ramp ``ov / 4`` wide around the middle; pixels
    near a tile's cut edge (little context) get weight ~0, so the output has no seam."""
    ramps = []
    pos = np.arange(tile, dtype=np.float32) + np.float32(0.5)
    for i, s in enumerate(starts):
        w = np.ones(tile, np.float32)
        for ov, dist in ((starts[i - 1] + tile - s if i > 0 else 0, pos),
                         (s + tile - starts[i + 1] if i + 1 < len(starts) else 0, tile - pos)):
            if ov > 0:
                band = max(ov / 4, 1.0)
                w = np.minimum(w, np.clip((dist - np.float32((ov - band) / 2)) / np.float32(band),
                                          1e-4, 1).astype(np.float32))
        ramps.append(w)
    return ramps


# --------------------------------------------------------------------------- tile plans


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one (padded) input go."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    memory: int = 0  # estimated bytes for activations and the output band (0: not estimated)

    @property
    def tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def multiplier(self) -> float:
        """Pixels computed / pixels in the image: the compute wasted on overlaps, plus one."""
        return self.tiles * self.tile_h * self.tile_w / (self.height * self.width)

    def __str__(self) -> str:
        shape = "whole image" if self.tiles == 1 else (
            f"{len(self.xs)}x{len(self.ys)} tiles of {self.tile_w}x{self.tile_h}")
        memory = f", ~{self.memory / 2**30:.2f} GiB" if self.memory else ""
        return (f"{self.width}x{self.height}: {shape}, compute x{self.multiplier:.3f}{memory}")


def fixed_plan(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> TilePlan:
    """Equal tiles of ``tile`` pixels (0: the whole image), evenly spread."""
    side = (tile or max(height, width)) // multiple * multiple or multiple
    th, tw = min(side, height), min(side, width)
    return TilePlan(height, width, th, tw, tuple(tile_starts(height, th, overlap)),
                    tuple(tile_starts(width, tw, overlap)))


def budget_plan(height: int, width: int, overlap: int, multiple: int,
                memory: Callable[[int, int], int], budget: int) -> TilePlan:
    """The whole image if ``memory(h, w)`` fits ``budget``, else the tiles that fit with the
    least compute spent on overlaps (then the fewest), each sized to cover the image exactly: for
    n tiles on a side, tile = ceil((size + (n - 1) * overlap) / n)."""
    def side(size: int, n: int) -> int:
        t = -(-(size + (n - 1) * overlap) // n)
        return min(-(-t // multiple) * multiple, size)

    def counts(size: int) -> list[int]:  # tiles must stay wider than the overlap
        return [n for n in range(1, 257) if n == 1 or side(size, n) > overlap + multiple]

    if memory(height, width) <= budget:  # the usual case: the whole image fits
        return TilePlan(height, width, height, width, (0,), (0,), memory(height, width))
    options = []
    for ny in counts(height):
        for nx in counts(width):
            th, tw = side(height, ny), side(width, nx)
            options.append((ny * nx * th * tw, ny * nx, ny, nx, th, tw))
    for _, _, ny, nx, th, tw in sorted(options):
        need = memory(th, tw)
        if need <= budget:
            return TilePlan(height, width, th, tw, tuple(tile_starts(height, th, overlap, ny)),
                            tuple(tile_starts(width, tw, overlap, nx)), need)
    raise InferenceError(f"a {width}x{height} input does not fit a memory budget of "
                         f"{budget / 2**30:.2f} GiB even in tiles of {overlap + 2 * multiple} px; "
                         "raise --max-memory or lower --tile-overlap")


# --------------------------------------------------------------------------- engine


class TileEngine:
    """Runs ``model`` over (1, C, H, W) arrays in overlapping tiles and hands the result over in
    bands of finished rows, so that memory grows with the tile and the image width, not the
    image area.

    ``tile="auto"`` runs the whole image when it fits ``budget`` bytes, else the fewest tiles that
    fit; the footprint is ``bytes_per_pixel`` (activations per input pixel, measured per
    architecture, dtype and backend) times the tile area, plus the output band.
    ``ensemble_batch`` is how many flips/rotations go through one forward pass: a number, or None
    for as many as the budget allows (8 with a fixed tile)."""

    def __init__(self, model: Model, descriptor: ModelDescriptor,
                 tile: int | Literal["auto"] = 512, tile_overlap: int = 192,
                 self_ensemble: SelfEnsemble = "off", batch_size: int = 1,
                 budget: int | None = None, bytes_per_pixel: float | None = None,
                 ensemble_batch: int | None = None, transforms: int = 8) -> None:
        if self_ensemble not in ("off", "mean", "median"):
            raise InferenceError(f"self_ensemble must be off, mean or median, not {self_ensemble!r}")
        if transforms not in TRANSFORMS:
            raise InferenceError(f"a self-ensemble runs 2, 4 or 8 flips/rotations, not {transforms!r}")
        if tile != "auto" and (not isinstance(tile, int) or tile < 0):
            raise InferenceError(f"tile must be 'auto' or a size >= 0, not {tile!r}")
        if tile_overlap < 0 or batch_size < 1:
            raise InferenceError("tile_overlap must be >= 0, batch_size >= 1")
        if tile != "auto" and tile and tile_overlap >= tile:
            raise InferenceError(f"tile_overlap ({tile_overlap}) must be smaller than the tile ({tile})")
        if tile == "auto" and (budget is None or bytes_per_pixel is None):
            raise InferenceError("tile 'auto' needs a memory budget and the model's footprint")
        self.model, self.descriptor = model, descriptor
        self.tile, self.tile_overlap = tile, tile_overlap
        self.self_ensemble, self.batch_size = self_ensemble, batch_size
        self.transforms = TRANSFORMS[transforms]
        self.budget, self.bytes_per_pixel = budget, bytes_per_pixel
        self.fixed_ensemble_batch = ensemble_batch
        self.ensemble_batch = ensemble_batch or 1
        self.last_plan: TilePlan | None = None
        self.on_plan: Callable[[TilePlan], None] | None = None  # hears each plan before it runs
        self._on_pass: Callable[[], None] | None = None
        self.reserved = 0  # bytes of the budget already taken (the input image); set per call

    # -- planning

    def band_bytes(self, tile_h: int, width: int) -> int:
        """The float32 output band (accumulator and its finished rows) for one tile row."""
        s = self.descriptor.scale
        return 2 * 4 * self.descriptor.out_channels * tile_h * s * width * s

    def plan(self, height: int, width: int) -> TilePlan:
        """The tile plan for a padded input of this size (and the self-ensemble batch it allows)."""
        m = self.descriptor.size_multiple
        if self.tile != "auto":
            tile = self.tile and max(self.tile, -(-self.descriptor.min_size // m) * m)
            plan = fixed_plan(height, width, tile, self.tile_overlap, m)
            self.check_batch_fits(plan)
            self.ensemble_batch = self.fixed_ensemble_batch or 8
        else:
            bpp = self.bytes_per_pixel

            def memory(th: int, tw: int, batch: int | None = None) -> int:
                return int(bpp * th * tw * (batch or self.batch_size)) + self.band_bytes(th, width)

            budget = self.budget - self.reserved
            try:
                plan = budget_plan(height, width, self.tile_overlap, m, memory, budget)
            except InferenceError:
                if self.batch_size > 1 and memory(self.tile_overlap + 2 * m, self.tile_overlap + 2 * m,
                                                  1) <= budget:
                    raise InferenceError(f"--batch-size {self.batch_size}: that many tiles per pass "
                                         f"do not fit the memory budget of {budget / 2**30:.2f} GiB "
                                         "even at the smallest tile; lower --batch-size") from None
                raise
            spare = budget - plan.memory
            per_copy = bpp * plan.tile_h * plan.tile_w * self.batch_size
            self.ensemble_batch = self.fixed_ensemble_batch or next(
                (b for b in (8, 4, 2) if (b - 1) * per_copy <= spare), 1)
        self.last_plan = plan
        if self.on_plan is not None:
            self.on_plan(plan)
        return plan

    def check_batch_fits(self, plan: TilePlan) -> None:
        """A fixed tile run ``batch_size`` at a time must fit the budget where one is known: a
        batch that cannot is refused by naming ``--batch-size`` before any pass (it had ended in
        the allocator's traceback)."""
        if self.batch_size == 1 or self.budget is None or self.bytes_per_pixel is None:
            return
        batch = min(self.batch_size, len(plan.xs))  # a pass takes the tiles of one row at most
        need = self.bytes_per_pixel * plan.tile_h * plan.tile_w * batch
        if batch > 1 and need > self.budget - self.reserved:
            raise InferenceError(f"--batch-size {self.batch_size}: {batch} tiles of {plan.tile_w}x"
                                 f"{plan.tile_h} per pass need about {need / 2**30:.1f} GiB, over the "
                                 f"memory budget of {(self.budget - self.reserved) / 2**30:.1f} GiB; "
                                 "lower --batch-size (or --tile)")

    # -- running

    def _run_ensembled(self, batch: np.ndarray) -> np.ndarray:
        """The flips/rotations, ``ensemble_batch`` of them per forward pass: those of one shape
        (all for a square tile) go through together."""
        if self.self_ensemble == "off":
            return self._forward(batch)
        outs: dict[int, np.ndarray] = {}
        n = batch.shape[0]
        for group in self._flip_groups(batch.shape[-1] == batch.shape[-2]):
            for c in range(0, len(group), self.ensemble_batch):
                ks = group[c:c + self.ensemble_batch]
                result = self._forward(np.concatenate([dihedral(batch, k) for k in ks]))
                for j, k in enumerate(ks):
                    outs[k] = dihedral_inverse(result[j * n:(j + 1) * n], k)
        if self.self_ensemble == "mean":
            total = outs[0].copy()
            for k in self.transforms[1:]:
                total += outs[k]
            return total / np.float32(len(self.transforms))
        # the median of an even count: the mean of the two middle values
        middle = len(self.transforms) // 2
        stacked = np.stack([outs[k] for k in self.transforms])
        return np.sort(stacked, axis=0)[middle - 1:middle + 1].mean(0, dtype=np.float32)

    def _flip_groups(self, square: bool) -> list[list[int]]:
        """The flips/rotations of one output shape: all of them for a square tile, else those
        that keep the shape and those that turn it."""
        if square:
            return [list(self.transforms)]
        return [g for g in ([k for k in self.transforms if k % 2 == 0],
                            [k for k in self.transforms if k % 2]) if g]

    def _passes(self, plan: TilePlan) -> int:
        """Forward passes the plan takes (what progress counts)."""
        per_batch = 1 if self.self_ensemble == "off" else sum(
            -(-len(g) // self.ensemble_batch) for g in self._flip_groups(plan.tile_h == plan.tile_w))
        return len(plan.ys) * -(-len(plan.xs) // self.batch_size) * per_batch

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        out = self.model(batch)
        if self._on_pass is not None:
            self._on_pass()
        return out

    def __call__(self, x: np.ndarray, on_progress: Progress | None = None) -> np.ndarray:
        """(N, C, H, W) float in [0, 1] -> (N, C_out, sH, sW) float32, unclamped."""
        if x.ndim != 4:
            raise InferenceError(f"expected an (N, C, H, W) array, got shape {tuple(x.shape)}")
        return np.stack([np.concatenate([rows for _, rows in self.stream(x[i:i + 1], on_progress)], 1)
                         for i in range(x.shape[0])])

    def _pad(self, x: np.ndarray) -> np.ndarray:
        """Pad to the model's size multiple and minimum (pixel-unshuffle models need sizes
        divisible by their factor, window transformers whole windows) by reflection (edge
        replication for tiny inputs); the output is cropped back."""
        h, w = x.shape[-2:]
        m, least = self.descriptor.size_multiple, self.descriptor.min_size
        pad_h, pad_w = (-max(h, least)) % m + max(least - h, 0), (-max(w, least)) % m + max(least - w, 0)
        if not (pad_h or pad_w):
            return x
        mode = "reflect" if min(h, w) > max(pad_h, pad_w) else "edge"
        return np.pad(x, [(0, 0), (0, 0), (0, pad_h), (0, pad_w)], mode=mode)

    def _tile_row(self, x: np.ndarray, plan: TilePlan, y0: int) -> Iterator[tuple[int, np.ndarray]]:
        """(column index, output) of each tile in one row of the plan, ``batch_size`` at a time."""
        th, tw, xs = plan.tile_h, plan.tile_w, plan.xs
        for b in range(0, len(xs), self.batch_size):
            chunk = range(b, min(b + self.batch_size, len(xs)))
            batch = _as_float(np.concatenate([x[..., y0:y0 + th, xs[ix]:xs[ix] + tw] for ix in chunk]))
            yield from zip(chunk, self._run_ensembled(batch))

    def stream(self, x: np.ndarray, on_progress: Progress | None = None
               ) -> Iterator[tuple[int, np.ndarray]]:
        """(1, C, H, W) float in [0, 1] (or uint8 / uint16 samples, converted tile by tile, so a
        huge input costs its own size only) -> (first row, (C_out, rows, sW) float32) bands of
        finished output rows, top to bottom; only one tile row's band is held at a time."""
        _, _, h, w = x.shape
        x = self._pad(x)
        plan = self.plan(*x.shape[-2:])
        total, done = self._passes(plan), [0]
        if on_progress:  # every forward pass counts: tiles, and flips with self-ensemble
            on_progress(0, total)

            def tick() -> None:
                done[0] += 1
                on_progress(done[0], total)
            self._on_pass = tick
        try:
            yield from self._stream_plan(x, plan, h, w)
        finally:
            self._on_pass = None

    def _stream_plan(self, x: np.ndarray, plan: TilePlan, h: int, w: int
                     ) -> Iterator[tuple[int, np.ndarray]]:
        s, th, tw = self.descriptor.scale, plan.tile_h, plan.tile_w
        if plan.tiles == 1:  # the whole image: nothing to blend
            out = self._run_ensembled(_as_float(x))[0]
            yield 0, out[:, :h * s, :w * s]
            return
        wy = [np.repeat(v, s) for v in tile_ramps(list(plan.ys), th)]
        wx = [np.repeat(v, s) for v in tile_ramps(list(plan.xs), tw)]
        band = _Band(self.descriptor.out_channels, plan.width * s)
        for x0, v in zip(plan.xs, wx):
            band.norm_x[x0 * s:(x0 + tw) * s] += v
        for iy, y0 in enumerate(plan.ys):
            band.extend(y0 * s, wy[iy])
            for ix, tile_out in self._tile_row(x, plan, y0):
                tile_out *= wy[iy][:, None]
                tile_out *= wx[ix][None, :]
                band.add(y0 * s, plan.xs[ix] * s, tile_out)
            last = iy + 1 == len(plan.ys)
            top, rows = band.take((y0 + th) * s if last else plan.ys[iy + 1] * s)
            if top < h * s:
                yield top, rows[:, :h * s - top, :w * s]


def _as_float(x: np.ndarray) -> np.ndarray:
    """float32 samples in [0, 1]: integer images are divided by their peak."""
    if x.dtype == np.float32:
        return x
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    return x.astype(np.float32) / np.float32(np.iinfo(x.dtype).max)


class _Band:
    """The output rows that tiles still overlap: weighted sums and their row weights."""

    def __init__(self, channels: int, width: int) -> None:
        self.acc = np.zeros((channels, 0, width), np.float32)
        self.norm_y = np.zeros(0, np.float32)
        self.norm_x = np.zeros(width, np.float32)
        self.top = 0  # output row of acc[:, 0]

    def extend(self, y: int, weights: np.ndarray) -> None:
        """Cover rows up to ``y + len(weights)`` and add that tile row's row weights."""
        grow = y + weights.size - self.top - self.norm_y.size
        if grow > 0:
            fresh = np.zeros((self.acc.shape[0], grow, self.acc.shape[2]), np.float32)
            self.acc = np.concatenate([self.acc, fresh], 1)
            self.norm_y = np.concatenate([self.norm_y, np.zeros(grow, np.float32)])
        self.norm_y[y - self.top:y - self.top + weights.size] += weights

    def add(self, y: int, x: int, weighted: np.ndarray) -> None:
        self.acc[:, y - self.top:y - self.top + weighted.shape[1], x:x + weighted.shape[2]] += weighted

    def take(self, until: int) -> tuple[int, np.ndarray]:
        """Normalise and hand over the rows above ``until``, which no later tile touches."""
        n = until - self.top
        rows = self.acc[:, :n] / (self.norm_y[:n, None] * self.norm_x[None, :])
        top = self.top
        self.acc, self.norm_y, self.top = self.acc[:, n:], self.norm_y[n:], until
        return top, rows
