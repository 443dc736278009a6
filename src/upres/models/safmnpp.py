"""SAFMN++ (Sun et al., NTIRE 2024 efficient SR entry; an evolution of SAFMN, ICCV 2023),
written from the challenge report's description and the published state dict's names and
shapes: each block is a simplified spatially-adaptive modulation (a 3x3 projection, a third of
the channels max-pooled to 1/8, a depthwise 3x3, upsampled and used as a GELU gate) followed by
a convolutional channel mixer; a bilinear upsampling of the input is the skip. No biases."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from upres.models.blocks import conv, numbered, required, upsampler
from upres.models.descriptor import ModelDescriptor

NAME = "SAFMNPP"
POOL = 8  # the modulation branch works at 1/POOL of the input's size


class SimpleModulation(nn.Module):
    def __init__(self, dim: int, ratio: int = 3) -> None:
        super().__init__()
        self.chunk = dim // ratio
        self.proj = conv(dim, dim, 3, bias=False)
        self.dwconv = nn.Conv2d(self.chunk, self.chunk, 3, padding=1, groups=self.chunk, bias=False)
        self.out = conv(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        gated, rest = torch.split(self.proj(x), (self.chunk, x.shape[1] - self.chunk), 1)
        gate = self.dwconv(F.adaptive_max_pool2d(gated, (h // POOL, w // POOL)))
        gate = F.interpolate(gate, size=(h, w), mode="bilinear", align_corners=False)
        return self.out(F.gelu(torch.cat([rest, F.gelu(gate) * gated], 1)))


class ChannelMixer(nn.Module):
    def __init__(self, dim: int, ffn_scale: float) -> None:
        super().__init__()
        hidden = int(dim * ffn_scale)
        self.conv1, self.conv2 = conv(dim, hidden, 3, bias=False), conv(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.gelu(self.conv1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, ffn_scale: float) -> None:
        super().__init__()
        self.conv1, self.conv2 = SimpleModulation(dim), ChannelMixer(dim, ffn_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + x


class SAFMNPP(nn.Module):
    def __init__(self, dim: int = 36, n_blocks: int = 6, ffn_scale: float = 1.5,
                 upscaling_factor: int = 4) -> None:
        super().__init__()
        self.hparams = dict(dim=dim, n_blocks=n_blocks, ffn_scale=ffn_scale,
                            upscaling_factor=upscaling_factor)
        self.to_feat = conv(3, dim, 3, bias=False)
        self.feats = nn.Sequential(*[Block(dim, ffn_scale) for _ in range(n_blocks)])
        self.to_img = upsampler(dim, 3, upscaling_factor, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = F.interpolate(x, scale_factor=self.hparams["upscaling_factor"], mode="bilinear",
                             align_corners=False)
        return self.to_img(self.feats(self.to_feat(x))) + skip


def describe(model: SAFMNPP) -> ModelDescriptor:
    h = model.hparams
    return ModelDescriptor(arch=NAME, scale=h["upscaling_factor"], min_size=POOL, dtypes=("fp32", "bf16"),
                           activation_channels=int(h["dim"] * max(h["ffn_scale"], 2)), hparams=dict(h))


def detect(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(k in state_dict for k in ("to_feat.weight", "feats.0.conv1.proj.weight",
                                         "feats.0.conv1.dwconv.weight", "feats.0.conv2.conv1.weight"))


def infer_hparams(state_dict: dict[str, torch.Tensor], source: str = "state dict") -> dict:
    head, up, hidden = required(state_dict, source, "a SAFMN++", "to_feat.weight", "to_img.0.weight",
                                "feats.0.conv2.conv1.weight")
    return dict(dim=head.shape[0], n_blocks=numbered(state_dict, r"feats\.(\d+)\.") + 1,
                ffn_scale=hidden.shape[0] / head.shape[0], upscaling_factor=math.isqrt(up.shape[0] // 3))
