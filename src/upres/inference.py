"""The one inference path, used by ``upscale``, ``predict``, ensembles and training validation:
device and dtype choice, seamless overlapping tiles run in batches, and the geometric
self-ensemble (8 flips/rotations, mean or median), which works tile by tile."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from upres import images
from upres.weights import load_model

SelfEnsemble = Literal["off", "mean", "median"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32. fp16 is CUDA-only."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, fp32, bf16 or fp16")
    if dtype == "fp16" and device.type != "cuda":
        raise ValueError(f"dtype fp16 is supported on CUDA only, not on {device.type}; "
                         "use bf16 or fp32")
    return DTYPES[dtype]


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision by autocast (weights stay fp32); fp32 runs plainly."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


def blend_weights(starts: list[int], tile: int, size: int) -> list[torch.Tensor]:
    """1-D weights per tile. Where two tiles overlap by ``ov``, each keeps the half nearer its own
    centre and the hand-over is a linear ramp ``ov / 4`` wide around the middle; pixels near a
    tile's cut edge (little context) get weight ~0, so the output has no seam."""
    weights = []
    pos = torch.arange(tile, dtype=torch.float32) + 0.5
    for i, s in enumerate(starts):
        w = torch.ones(tile)
        for ov, dist in ((starts[i - 1] + tile - s if i > 0 else 0, pos),
                         (s + tile - starts[i + 1] if i + 1 < len(starts) else 0, tile - pos)):
            if ov > 0:
                band = max(ov / 4, 1.0)
                w = torch.minimum(w, ((dist - (ov - band) / 2) / band).clamp(1e-4, 1))
        weights.append(w)
    return weights


# --------------------------------------------------------------------------- engine


@dataclass
class InferenceOptions:
    # Input tile side in pixels (0: whole image). RRDBNet x4plus sees far: two 512 tiles sharing
    # 128 pixels (64 px of context at the hand-over) differed from the whole image by up to
    # 3.3/255 on a real photo, sharing 192 (96 px) by 0.06/255; so neighbours share 192 pixels
    # and hand over in the middle of that overlap.
    tile: int = 512
    tile_overlap: int = 192
    self_ensemble: SelfEnsemble = "off"
    device: str = "auto"
    dtype: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: bool = True
    batch_size: int = 0  # tiles per forward pass; 0: 4 on CUDA, 1 elsewhere
    compile: bool = False  # torch.compile the model (test against eager on new platforms)
    alpha: Literal["bicubic", "model"] = "bicubic"
    outscale: float | None = None  # final scale if not the model's (Lanczos / area resize)


class Upscaler:
    """Upscale images with one model; activation memory scales with the tile, not the image."""

    def __init__(self, model: nn.Module | str | Path, options: InferenceOptions | None = None,
                 **overrides) -> None:
        opts = options or InferenceOptions()
        for key, value in overrides.items():
            if not hasattr(opts, key):
                raise TypeError(f"unknown inference option {key!r}")
            setattr(opts, key, value)
        if opts.self_ensemble not in ("off", "mean", "median"):
            raise ValueError(f"self_ensemble must be off, mean or median, not {opts.self_ensemble!r}")
        if opts.tile < 0 or opts.tile_overlap < 0 or opts.batch_size < 0:
            raise ValueError("tile, tile_overlap and batch_size must be >= 0")
        if opts.outscale is not None and opts.outscale <= 0:
            raise ValueError(f"outscale must be positive, not {opts.outscale}")
        if opts.tile and opts.tile_overlap >= opts.tile:
            raise ValueError(f"tile_overlap ({opts.tile_overlap}) must be smaller than the tile "
                             f"({opts.tile})")
        self.options = opts
        self.device = resolve_device(opts.device)
        self.dtype = resolve_dtype(opts.dtype, self.device)
        self.batch_size = opts.batch_size or (4 if self.device.type == "cuda" else 1)
        if not isinstance(model, nn.Module):
            model = load_model(model)
        self.model = model.eval().to(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # tiles share one shape: tune kernels once
        # Set the weights' layout both ways: a model shared with an earlier Upscaler may have
        # been converted already.
        self.model = self.model.to(memory_format=torch.channels_last if opts.channels_last
                                   else torch.contiguous_format)
        self.scale = int(model.hparams["scale"])
        self.multiple = int(getattr(model, "input_multiple", 1))
        self.in_ch = int(model.hparams.get("num_in_ch", 3))
        self._forward = torch.compile(self.model) if opts.compile else self.model

    # -- tensors

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device)
        if self.options.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, self.dtype):
            return self._forward(batch).float()

    def _run_ensembled(self, batch: torch.Tensor) -> torch.Tensor:
        if self.options.self_ensemble == "off":
            return self._run(batch)
        outs = torch.stack([dihedral_inverse(self._run(dihedral(batch, k)), k) for k in range(8)])
        if self.options.self_ensemble == "mean":
            return outs.mean(0)
        return outs.sort(0).values[3:5].mean(0)  # median of 8: mean of the two middle values

    @torch.inference_mode()
    def upscale_tensor(self, x: torch.Tensor,
                       progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """(N, C, H, W) float in [0, 1] -> (N, C_out, sH, sW) float32 on the CPU, unclamped."""
        if x.ndim != 4:
            raise ValueError(f"expected an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        return torch.cat([self._upscale_one(x[i:i + 1], progress) for i in range(x.shape[0])])

    def _upscale_one(self, x: torch.Tensor, progress) -> torch.Tensor:
        _, _, h, w = x.shape
        m = self.multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:  # pixel-unshuffle models need sizes divisible by m
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if min(h, w) > max(pad_h, pad_w)
                      else "replicate")
        H, W = x.shape[-2:]
        s = self.scale
        tile = self.options.tile or max(H, W)
        th, tw = min(tile // m * m or m, H), min(tile // m * m or m, W)
        overlap = self.options.tile_overlap
        ys, xs = tile_starts(H, th, overlap), tile_starts(W, tw, overlap)
        wy = [v.repeat_interleave(s) for v in blend_weights(ys, th, H)]
        wx = [v.repeat_interleave(s) for v in blend_weights(xs, tw, W)]
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

    # -- arrays and files

    def upscale_array(self, img: np.ndarray,
                      progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Upscale an HxW / HxWx3 / HxWx4 uint8 or uint16 array; mode and bit depth are kept.
        Gray runs through the model as RGB and returns to gray; alpha is upscaled separately."""
        float_img = images.to_float(img)
        alpha = None
        if float_img.ndim == 3 and float_img.shape[2] == 4:
            float_img, alpha = float_img[..., :3], float_img[..., 3]
        gray = float_img.ndim == 2
        rgb = np.repeat(float_img[..., None], 3, axis=2) if gray else float_img
        out = self._upscale_rgb(rgb, progress)
        if gray:
            out = out @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if alpha is not None:
            out = np.concatenate([out, self._upscale_alpha(alpha)[..., None]], axis=2)
        if self.options.outscale and self.options.outscale != self.scale:
            size = (round(img.shape[1] * self.options.outscale),
                    round(img.shape[0] * self.options.outscale))
            shrink = self.options.outscale < self.scale
            out = cv2.resize(out, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4)
        return images.from_float(out, img.dtype)

    def upscale_float(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 float32 RGB in [0, 1] -> (sH)x(sW)x3 float32, unclamped and unrounded."""
        return self._upscale_rgb(rgb, None)

    def _upscale_rgb(self, rgb: np.ndarray, progress) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
        if self.in_ch == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        y = self.upscale_tensor(x, progress)[0]
        if y.shape[0] == 1:
            y = y.expand(3, -1, -1)
        return y.permute(1, 2, 0).numpy()

    def _upscale_alpha(self, alpha: np.ndarray) -> np.ndarray:
        if self.options.alpha == "model":
            return self._upscale_rgb(np.repeat(alpha[..., None], 3, axis=2), None).mean(axis=2)
        a = torch.from_numpy(np.ascontiguousarray(alpha))[None, None]
        return F.interpolate(a, scale_factor=self.scale, mode="bicubic",
                             align_corners=False)[0, 0].numpy()

    def upscale_file(self, src: str | Path, dst: str | Path,
                     progress: Callable[[int, int], None] | None = None) -> Path:
        """Read, upscale and atomically write one image; returns the written path."""
        result = self.upscale_array(images.read_image(src), progress)
        images.write_image(dst, result)
        return Path(dst)
