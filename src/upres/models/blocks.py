"""Layers shared by the small published PSNR networks (IMDN, RFDN, RLFN, BSRN, SPAN): padded
convolutions, 1x1 layers stored as ``nn.Linear`` the way some authors saved them, blueprint
separable convolutions and enhanced spatial attention, each written once."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from upres.errors import WeightsError


def conv(cin: int, cout: int, k: int, bias: bool = True) -> nn.Conv2d:
    """A convolution that keeps the spatial size."""
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


def upsampler(channels: int, out_channels: int, scale: int, bias: bool = True) -> nn.Sequential:
    """One 3x3 convolution to ``out_channels * scale**2`` and a pixel shuffle."""
    return nn.Sequential(conv(channels, out_channels * scale ** 2, 3, bias), nn.PixelShuffle(scale))


class Pointwise(nn.Linear):
    """A 1x1 convolution kept as ``nn.Linear`` (weight ``[out, in]``), as BSRN's authors saved it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class BSConvU(nn.Module):
    """Blueprint separable convolution (Haase and Amthor, CVPR 2020): a pointwise mix, then a
    depthwise 3x3."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.pw = Pointwise(cin, cout)
        self.dw = nn.Conv2d(cout, cout, 3, padding=1, groups=cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw(self.pw(x))


def conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1)


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class ESA(nn.Module):
    """Enhanced spatial attention (Liu et al., RFANet, CVPR 2020): a strided, max-pooled branch
    sees a wide context cheaply; upsampled back and added to a 1x1 path, it gates every channel.
    ``deep`` adds the two extra 3x3 layers of RFDN and BSRN (RLFN drops them). Inputs need at
    least ``MIN_SIZE`` pixels a side (a 3x3 stride-2 convolution, then a 7x7 pool)."""

    MIN_SIZE = 15

    def __init__(self, channels: int, reduced: int, pointwise: Callable = conv1x1,
                 conv3: Callable = conv3x3, act: Callable = F.relu, deep: bool = True) -> None:
        super().__init__()
        self.deep, self.act = deep, act
        self.conv1 = pointwise(channels, reduced)
        self.conv_f = pointwise(reduced, reduced)
        if deep:
            self.conv_max = conv3(reduced, reduced)
        self.conv2 = nn.Conv2d(reduced, reduced, 3, stride=2)
        self.conv3 = conv3(reduced, reduced)
        if deep:
            self.conv3_ = conv3(reduced, reduced)
        self.conv4 = pointwise(reduced, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        near = self.conv1(x)
        wide = F.max_pool2d(self.conv2(near), kernel_size=7, stride=3)
        if self.deep:
            wide = self.conv3_(self.act(self.conv3(self.act(self.conv_max(wide)))))
        else:
            wide = self.conv3(wide)
        wide = F.interpolate(wide, x.shape[2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(wide + self.conv_f(near)))


def numbered(state_dict: dict, pattern: str) -> int:
    """The largest N of keys matching ``pattern`` (a regex with one group), 0 if none: how many
    numbered blocks a state dict holds."""
    found = {int(m.group(1)) for k in state_dict if (m := re.match(pattern, k))}
    return max(found, default=0)


def required(state_dict: dict, source: str, family: str, *keys: str) -> list[torch.Tensor]:
    """The tensors ``keys`` of a state dict, or an error naming the first one missing."""
    missing = [k for k in keys if k not in state_dict]
    if missing:
        raise WeightsError(f"{source}: not {family} state dict (missing {missing[0]!r})")
    return [state_dict[k] for k in keys]


def channels_and_scale(upsampler_weight: torch.Tensor) -> tuple[int, int]:
    """Output channels (3, else 1) and scale of a pixel-shuffle upsampler's convolution."""
    out = 3 if upsampler_weight.shape[0] % 3 == 0 else 1
    return out, math.isqrt(upsampler_weight.shape[0] // out)
