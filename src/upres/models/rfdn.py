"""RFDN (Liu et al., "Residual Feature Distillation Network for Lightweight Image
Super-Resolution", ECCVW 2020; AIM 2020 efficient SR winner, the NTIRE 2022 baseline), written
from the paper and the published state dict's names and shapes: IMDN's distillation made
cheaper (1x1 layers split features off, 3x3 layers with a shallow residual refine the rest),
enhanced spatial attention after each block, a 1x1 fusion of every block and a long skip."""

from __future__ import annotations

import torch
from torch import nn

from upres.models.blocks import ESA, channels_and_scale, conv, numbered, required, upsampler
from upres.models.descriptor import ModelDescriptor

NAME = "RFDN"
SLOPE = 0.05  # the blocks' leaky ReLU


class FeatureDistillationBlock(nn.Module):
    """Three steps that each distil half the channels through a 1x1 layer and refine all of them
    through a 3x3 layer with a residual; the distilled parts are fused and spatially gated."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        for i in (1, 2, 3):  # the authors' names: c1_d, c1_r, ...
            setattr(self, f"c{i}_d", conv(channels, half, 1))
            setattr(self, f"c{i}_r", conv(channels, channels, 3))
        self.c4 = conv(channels, half, 3)
        self.act = nn.LeakyReLU(SLOPE)
        self.c5 = conv(half * 4, channels, 1)
        self.esa = ESA(channels, channels // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, rest = [], x
        for i in (1, 2, 3):
            kept.append(self.act(getattr(self, f"c{i}_d")(rest)))
            rest = self.act(getattr(self, f"c{i}_r")(rest) + rest)
        kept.append(self.act(self.c4(rest)))
        return self.esa(self.c5(torch.cat(kept, 1)))


class RFDN(nn.Module):
    def __init__(self, in_nc: int = 3, nf: int = 50, num_modules: int = 4, out_nc: int = 3,
                 upscale: int = 4, img_range: float = 255.0) -> None:
        super().__init__()
        # img_range: the published files take and give pixel values 0..255
        self.hparams = dict(in_nc=in_nc, nf=nf, num_modules=num_modules, out_nc=out_nc, upscale=upscale,
                            img_range=img_range)
        self.fea_conv = conv(in_nc, nf, 3)
        for i in range(1, num_modules + 1):  # B1 ... Bn
            setattr(self, f"B{i}", FeatureDistillationBlock(nf))
        self.c = nn.Sequential(conv(nf * num_modules, nf, 1), nn.LeakyReLU(SLOPE))
        self.LR_conv = conv(nf, nf, 3)
        self.upsampler = upsampler(nf, out_nc, upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.fea_conv(x * self.hparams["img_range"])
        outs, out = [], feat
        for i in range(1, self.hparams["num_modules"] + 1):
            out = getattr(self, f"B{i}")(out)
            outs.append(out)
        return self.upsampler(self.LR_conv(self.c(torch.cat(outs, 1))) + feat) / self.hparams["img_range"]


def describe(model: RFDN) -> ModelDescriptor:
    h = model.hparams
    return ModelDescriptor(arch=NAME, scale=h["upscale"], in_channels=h["in_nc"], out_channels=h["out_nc"],
                           min_size=ESA.MIN_SIZE, dtypes=("fp32", "bf16"),
                           activation_channels=h["nf"] * h["num_modules"], hparams=dict(h))


def detect(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(k in state_dict for k in ("fea_conv.weight", "B1.c1_d.weight", "B1.esa.conv_max.weight",
                                         "c.0.weight", "LR_conv.weight", "upsampler.0.weight")) \
        and state_dict["B1.c1_d.weight"].dim() == 4


def infer_hparams(state_dict: dict[str, torch.Tensor], source: str = "state dict") -> dict:
    head, up = required(state_dict, source, "an RFDN", "fea_conv.weight", "upsampler.0.weight")
    out_nc, upscale = channels_and_scale(up)
    return dict(in_nc=head.shape[1], nf=head.shape[0], num_modules=numbered(state_dict, r"B(\d+)\."),
                out_nc=out_nc, upscale=upscale)
