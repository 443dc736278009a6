"""BSRN (Li et al., "Blueprint Separable Residual Network for Efficient Image Super-Resolution",
CVPRW 2022; the NTIRE 2022 efficient SR model-complexity winner), written from the paper and
the published state dict's names and shapes: RFDN's distillation blocks built of blueprint
separable convolutions, GELU, a learned per-channel scale before each block's output layer, the
image repeated four times along channels at the input. Its 1x1 layers are stored as
``nn.Linear`` (weights ``[out, in]``), as the authors saved them."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from upres.models.blocks import ESA, BSConvU, Pointwise, channels_and_scale, numbered, required, upsampler
from upres.models.descriptor import ModelDescriptor

NAME = "BSRN"
REPEAT = 4  # the input image is stacked this many times along channels


class SeparableDistillationBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        for i in (1, 2, 3):  # the authors' names: c1_d, c1_r, ...
            setattr(self, f"c{i}_d", Pointwise(channels, half))
            setattr(self, f"c{i}_r", BSConvU(channels, channels))
        self.c4 = BSConvU(channels, half)
        self.c5 = Pointwise(half * 4, channels)
        self.esa = ESA(channels, channels // 4, pointwise=Pointwise, conv3=BSConvU, act=F.gelu)
        self.cw = nn.Parameter(torch.ones(1, channels))  # per-channel scale (trained from ~1)
        self.conv_out = Pointwise(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, rest = [], x
        for i in (1, 2, 3):
            kept.append(F.gelu(getattr(self, f"c{i}_d")(rest)))
            rest = F.gelu(getattr(self, f"c{i}_r")(rest) + rest)
        kept.append(F.gelu(self.c4(rest)))
        out = self.esa(self.c5(torch.cat(kept, 1)))
        return self.conv_out(out * self.cw.view(1, -1, 1, 1)) + x


class BSRN(nn.Module):
    def __init__(self, num_in_ch: int = 3, num_feat: int = 48, num_block: int = 5, num_out_ch: int = 3,
                 upscale: int = 4) -> None:
        super().__init__()
        self.hparams = dict(num_in_ch=num_in_ch, num_feat=num_feat, num_block=num_block,
                            num_out_ch=num_out_ch, upscale=upscale)
        self.fea_conv = BSConvU(num_in_ch * REPEAT, num_feat)
        for i in range(1, num_block + 1):  # B1 ... Bn
            setattr(self, f"B{i}", SeparableDistillationBlock(num_feat))
        self.c1 = Pointwise(num_feat * num_block, num_feat)
        self.c2 = BSConvU(num_feat, num_feat)
        self.upsampler = nn.ModuleDict({"upsampleOneStep": upsampler(num_feat, num_out_ch, upscale)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = out = self.fea_conv(torch.cat([x] * REPEAT, 1))
        outs = []
        for i in range(1, self.hparams["num_block"] + 1):
            out = getattr(self, f"B{i}")(out)
            outs.append(out)
        trunk = F.gelu(self.c1(torch.cat(outs, 1)))
        return self.upsampler["upsampleOneStep"](self.c2(trunk) + feat)


def describe(model: BSRN) -> ModelDescriptor:
    h = model.hparams
    return ModelDescriptor(arch=NAME, scale=h["upscale"], in_channels=h["num_in_ch"],
                           out_channels=h["num_out_ch"], min_size=ESA.MIN_SIZE, dtypes=("fp32", "bf16"),
                           activation_channels=h["num_feat"] * h["num_block"], hparams=dict(h))


def detect(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(k in state_dict for k in ("fea_conv.pw.weight", "B1.cw", "c1.weight",
                                         "upsampler.upsampleOneStep.0.weight"))


def infer_hparams(state_dict: dict[str, torch.Tensor], source: str = "state dict") -> dict:
    head, up = required(state_dict, source, "a BSRN", "fea_conv.pw.weight",
                        "upsampler.upsampleOneStep.0.weight")
    out_ch, upscale = channels_and_scale(up)
    return dict(num_in_ch=head.shape[1] // REPEAT, num_feat=head.shape[0],
                num_block=numbered(state_dict, r"B(\d+)\."), num_out_ch=out_ch, upscale=upscale)
