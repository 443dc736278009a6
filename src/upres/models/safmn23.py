"""SAFMN as entered in the NTIRE 2023 efficient SR challenge (Sun et al.; the paper's network is
spandrel's ``SAFMN``), written from the paper and the published state dict's names and shapes.
It differs from the paper's network in three ways the file shows: a global response
normalisation (ConvNeXt V2) right after the first convolution, no layer norms inside the
blocks, and a bilinear upsampling of the input added to the output. The normalisation and the
multi-scale pooling read the whole input, so tiled output differs slightly from whole-image
output (as for SAFMN)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from upres.models.blocks import conv, numbered, required, upsampler
from upres.models.descriptor import ModelDescriptor

NAME = "SAFMN23"
LEVELS = 4  # the modulation's scales: full, 1/4, 1/8, 1/16


class GlobalResponseNorm(nn.Module):
    """Each channel scaled by its L2 energy over the image relative to the channels' mean."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True)
        return self.gamma * (x * energy / (energy.mean(dim=1, keepdim=True) + 1e-6)) + self.beta + x


class Modulation(nn.Module):
    """Spatially-adaptive feature modulation: channel groups seen at four scales, aggregated into
    a GELU gate on the input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        chunk = dim // LEVELS
        self.mfr = nn.ModuleList([nn.Conv2d(chunk, chunk, 3, padding=1, groups=chunk, bias=False)
                                  for _ in range(LEVELS)])
        self.aggr = conv(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        parts = []
        for i, (part, layer) in enumerate(zip(x.chunk(LEVELS, dim=1), self.mfr)):
            if i == 0:
                parts.append(layer(part))
                continue
            pooled = F.adaptive_max_pool2d(part, (h // 2 ** (i + 1), w // 2 ** (i + 1)))
            parts.append(F.interpolate(layer(pooled), size=(h, w), mode="nearest"))
        return F.gelu(self.aggr(torch.cat(parts, 1))) * x


class ChannelMixer(nn.Module):
    def __init__(self, dim: int, ffn_scale: float) -> None:
        super().__init__()
        hidden = int(dim * ffn_scale)
        self.ccm = nn.Sequential(conv(dim, hidden, 3, bias=False), nn.GELU(),
                                 conv(hidden, dim, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ccm(x)


class Block(nn.Module):
    def __init__(self, dim: int, ffn_scale: float) -> None:
        super().__init__()
        self.safm, self.ccm = Modulation(dim), ChannelMixer(dim, ffn_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.safm(x) + x
        return self.ccm(x) + x


class SAFMN23(nn.Module):
    def __init__(self, dim: int = 36, n_blocks: int = 8, ffn_scale: float = 2.0,
                 upscaling_factor: int = 4) -> None:
        super().__init__()
        self.hparams = dict(dim=dim, n_blocks=n_blocks, ffn_scale=ffn_scale,
                            upscaling_factor=upscaling_factor)
        self.norm = GlobalResponseNorm(dim)
        self.to_feat = conv(3, dim, 3)
        self.feats = nn.Sequential(*[Block(dim, ffn_scale) for _ in range(n_blocks)])
        self.to_img = upsampler(dim, 3, upscaling_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = F.interpolate(x, scale_factor=self.hparams["upscaling_factor"], mode="bilinear",
                             align_corners=False)
        return self.to_img(self.feats(self.norm(self.to_feat(x)))) + skip


def describe(model: SAFMN23) -> ModelDescriptor:
    h = model.hparams
    return ModelDescriptor(arch=NAME, scale=h["upscaling_factor"], min_size=2 ** LEVELS,
                           dtypes=("fp32", "bf16"), activation_channels=int(h["dim"] * h["ffn_scale"]),
                           hparams=dict(h))


def detect(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(k in state_dict for k in ("norm.gamma", "norm.beta", "to_feat.weight",
                                         "feats.0.safm.mfr.0.weight", "feats.0.ccm.ccm.0.weight"))


def infer_hparams(state_dict: dict[str, torch.Tensor], source: str = "state dict") -> dict:
    head, up, hidden = required(state_dict, source, "an NTIRE 2023 SAFMN", "to_feat.weight",
                                "to_img.0.weight", "feats.0.ccm.ccm.0.weight")
    return dict(dim=head.shape[0], n_blocks=numbered(state_dict, r"feats\.(\d+)\.") + 1,
                ffn_scale=hidden.shape[0] / head.shape[0], upscaling_factor=math.isqrt(up.shape[0] // 3))
