"""IMDN (Hui et al., "Lightweight Image Super-Resolution with Information Multi-distillation
Network", ACM MM 2019), written from the paper and the published x4 state dict's names and
shapes, so the authors' file loads strictly: a 3x3 head, ``num_modules`` information
multi-distillation blocks (each splits off a quarter of its channels three times, refines the
rest, and re-weights the concatenation by contrast-aware channel attention), a 1x1 fusion of
every block's output, a 3x3 convolution with a long skip, and a pixel-shuffle upsampler."""

from __future__ import annotations

import torch
from torch import nn

from upres.models.blocks import channels_and_scale, conv, numbered, required, upsampler
from upres.models.descriptor import ModelDescriptor

NAME = "IMDN"
SLOPE = 0.05  # the leaky ReLU's negative slope in the authors' blocks


class ContrastChannelAttention(nn.Module):
    """Channel weights from each channel's contrast (standard deviation plus mean)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
        return x * self.conv_du(std + mean)


class DistillationBlock(nn.Module):
    """Three distillation steps: a quarter of the channels is kept each time, the rest refined."""

    def __init__(self, channels: int, distill: float = 0.25) -> None:
        super().__init__()
        self.kept = int(channels * distill)
        rest = channels - self.kept
        self.c1 = conv(channels, channels, 3)
        self.c2, self.c3 = conv(rest, channels, 3), conv(rest, channels, 3)
        self.c4 = conv(rest, self.kept, 3)
        self.act = nn.LeakyReLU(SLOPE, inplace=True)
        self.c5 = conv(self.kept * 4, channels, 1)
        self.cca = ContrastChannelAttention(self.kept * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, rest = [], x
        for layer in (self.c1, self.c2, self.c3):
            first, rest = torch.split(self.act(layer(rest)), (self.kept, layer.out_channels - self.kept), 1)
            kept.append(first)
        kept.append(self.c4(rest))
        return self.c5(self.cca(torch.cat(kept, 1))) + x


class IMDN(nn.Module):
    def __init__(self, in_nc: int = 3, nf: int = 64, num_modules: int = 6, out_nc: int = 3,
                 upscale: int = 4) -> None:
        super().__init__()
        self.hparams = dict(in_nc=in_nc, nf=nf, num_modules=num_modules, out_nc=out_nc, upscale=upscale)
        self.fea_conv = conv(in_nc, nf, 3)
        for i in range(1, num_modules + 1):  # the authors' names: IMDB1 ... IMDBn
            setattr(self, f"IMDB{i}", DistillationBlock(nf))
        self.c = nn.Sequential(conv(nf * num_modules, nf, 1), nn.LeakyReLU(SLOPE, inplace=True))
        self.LR_conv = conv(nf, nf, 3)
        self.upsampler = upsampler(nf, out_nc, upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.fea_conv(x)
        outs, out = [], feat
        for i in range(1, self.hparams["num_modules"] + 1):
            out = getattr(self, f"IMDB{i}")(out)
            outs.append(out)
        return self.upsampler(self.LR_conv(self.c(torch.cat(outs, 1))) + feat)


def describe(model: IMDN) -> ModelDescriptor:
    h = model.hparams
    # Every block's output is kept for the fusion: nf x num_modules channels at the input size.
    return ModelDescriptor(arch=NAME, scale=h["upscale"], in_channels=h["in_nc"], out_channels=h["out_nc"],
                           dtypes=("fp32", "bf16"), activation_channels=h["nf"] * h["num_modules"],
                           hparams=dict(h))


def detect(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(k in state_dict for k in ("fea_conv.weight", "IMDB1.c1.weight", "LR_conv.weight",
                                         "upsampler.0.weight"))


def infer_hparams(state_dict: dict[str, torch.Tensor], source: str = "state dict") -> dict:
    head, up = required(state_dict, source, "an IMDN", "fea_conv.weight", "upsampler.0.weight")
    out_nc, upscale = channels_and_scale(up)
    return dict(in_nc=head.shape[1], nf=head.shape[0], num_modules=numbered(state_dict, r"IMDB(\d+)\."),
                out_nc=out_nc, upscale=upscale)
