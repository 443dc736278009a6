"""The tile engine: tensors in, tensors out, for any callable model described by a
``ModelDescriptor``. Device and dtype choice, seamless overlapping tiles run in batches, padding
to the model's size multiple, and the geometric self-ensemble (8 flips/rotations, mean or
median), which works tile by tile. It never loads files or knows about image modes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch.nn import functional as F

from upres.errors import InferenceError
from upres.models import ModelDescriptor

SelfEnsemble = Literal["off", "mean", "median"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
Progress = Callable[[int, int], None]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InferenceError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"device {device!r} requested but CUDA is not available")
    return dev


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(dtype: str, device: torch.device,
                  supported: tuple[str, ...] = tuple(DTYPES)) -> torch.dtype:
    """``auto``: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32, each only where the
    model supports it (fp32 otherwise). fp16 is CUDA-only."""
    if dtype == "auto":
        if device.type == "cuda" and "fp16" in supported:
            return torch.float16
        if device.type == "cpu" and cpu_has_fast_bf16() and "bf16" in supported:
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise InferenceError(f"unknown dtype {dtype!r}; choose auto, fp32, bf16 or fp16")
    if dtype == "fp16" and device.type != "cuda":
        raise InferenceError(f"dtype fp16 is supported on CUDA only, not on {device.type}; "
                             "use bf16 or fp32")
    if dtype not in supported:
        raise InferenceError(f"dtype {dtype} is not supported by this model (supported: "
                             f"{', '.join(supported)})")
    return DTYPES[dtype]


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision by autocast (weights stay fp32); fp32 runs plainly."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    """Tune cuDNN kernels for the call's fixed tile shape, then restore the caller's setting."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or old
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


# --------------------------------------------------------------------------- geometry


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/rotations of the last two dims (k in 0..7)."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    x = torch.rot90(x, -(k % 4), dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread starts of equal tiles covering ``size``, neighbours overlapping >= overlap."""
    if tile >= size:
        return [0]
    n = -(-(size - overlap) // (tile - overlap))
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def tile_ramps(starts: list[int], tile: int) -> list[torch.Tensor]:
    """1-D blending ramps per tile. Where two tiles overlap by ``ov``, each keeps the half nearer
    its own centre and the hand-over is a linear ramp ``ov / 4`` wide around the middle; pixels
    near a tile's cut edge (little context) get weight ~0, so the output has no seam."""
    ramps = []
    pos = torch.arange(tile, dtype=torch.float32) + 0.5
    for i, s in enumerate(starts):
        w = torch.ones(tile)
        for ov, dist in ((starts[i - 1] + tile - s if i > 0 else 0, pos),
                         (s + tile - starts[i + 1] if i + 1 < len(starts) else 0, tile - pos)):
            if ov > 0:
                band = max(ov / 4, 1.0)
                w = torch.minimum(w, ((dist - (ov - band) / 2) / band).clamp(1e-4, 1))
        ramps.append(w)
    return ramps


# --------------------------------------------------------------------------- engine


class TileEngine:
    """Runs ``model`` over (N, C, H, W) tensors in overlapping tiles; activation memory grows
    with the tile, not the image."""

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], descriptor: ModelDescriptor,
                 device: torch.device, dtype: torch.dtype, tile: int = 512, tile_overlap: int = 192,
                 self_ensemble: SelfEnsemble = "off", batch_size: int = 1,
                 channels_last: bool = True) -> None:
        if self_ensemble not in ("off", "mean", "median"):
            raise InferenceError(f"self_ensemble must be off, mean or median, not {self_ensemble!r}")
        if tile < 0 or tile_overlap < 0 or batch_size < 1:
            raise InferenceError("tile and tile_overlap must be >= 0, batch_size >= 1")
        if tile and tile_overlap >= tile:
            raise InferenceError(f"tile_overlap ({tile_overlap}) must be smaller than the tile ({tile})")
        self.model, self.descriptor = model, descriptor
        self.device, self.dtype = device, dtype
        self.tile, self.tile_overlap = tile, tile_overlap
        self.self_ensemble, self.batch_size, self.channels_last = self_ensemble, batch_size, channels_last

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, self.dtype):
            return self.model(batch).float()

    def _run_ensembled(self, batch: torch.Tensor) -> torch.Tensor:
        if self.self_ensemble == "off":
            return self._run(batch)
        outs = torch.stack([dihedral_inverse(self._run(dihedral(batch, k)), k) for k in range(8)])
        if self.self_ensemble == "mean":
            return outs.mean(0)
        return outs.sort(0).values[3:5].mean(0)  # median of 8: mean of the two middle values

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """(N, C, H, W) float in [0, 1] -> (N, C_out, sH, sW) float32 on the CPU, unclamped."""
        if x.ndim != 4:
            raise InferenceError(f"expected an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        with cudnn_benchmark(self.device.type == "cuda"):  # tiles share one shape
            return torch.cat([self._upscale_one(x[i:i + 1], progress) for i in range(x.shape[0])])

    def _upscale_one(self, x: torch.Tensor, progress: Progress | None) -> torch.Tensor:
        _, _, h, w = x.shape
        m, s = self.descriptor.size_multiple, self.descriptor.scale
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:  # e.g. pixel-unshuffle models need sizes divisible by m
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if min(h, w) > max(pad_h, pad_w)
                      else "replicate")
        H, W = x.shape[-2:]
        tile = self.tile or max(H, W)
        th, tw = min(tile // m * m or m, H), min(tile // m * m or m, W)
        ys, xs = tile_starts(H, th, self.tile_overlap), tile_starts(W, tw, self.tile_overlap)
        wy = [v.repeat_interleave(s) for v in tile_ramps(ys, th)]
        wx = [v.repeat_interleave(s) for v in tile_ramps(xs, tw)]
        norm_y, norm_x = torch.zeros(H * s), torch.zeros(W * s)
        for y0, v in zip(ys, wy):
            norm_y[y0 * s:(y0 + th) * s] += v
        for x0, v in zip(xs, wx):
            norm_x[x0 * s:(x0 + tw) * s] += v
        out = None
        jobs = [(iy, ix) for iy in range(len(ys)) for ix in range(len(xs))]
        bs = self.batch_size
        for b in range(0, len(jobs), bs):
            chunk = jobs[b:b + bs]
            batch = torch.cat([x[..., ys[iy]:ys[iy] + th, xs[ix]:xs[ix] + tw] for iy, ix in chunk])
            result = self._run_ensembled(batch).cpu()
            if out is None:
                out = torch.zeros(1, result.shape[1], H * s, W * s)
            for (iy, ix), tile_out in zip(chunk, result):
                weight = wy[iy][:, None] * wx[ix][None, :]
                out[0, :, ys[iy] * s:(ys[iy] + th) * s, xs[ix] * s:(xs[ix] + tw) * s] += tile_out * weight
            if progress:
                progress(min(b + bs, len(jobs)), len(jobs))
        out /= norm_y[:, None] * norm_x[None, :]
        return out[..., :h * s, :w * s]
