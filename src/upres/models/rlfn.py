"""RLFN (Kong et al., "Residual Local Feature Network for Efficient Super-Resolution", CVPRW
2022; NTIRE 2022 efficient SR winner), written from the paper and the published state dict's
names and shapes: RFDN without the distillation branches, each block three plain 3x3 layers with
one residual, a 1x1 layer and a lighter spatial attention, then a long skip."""

from __future__ import annotations

import torch
from torch import nn

from upres.models.blocks import ESA, channels_and_scale, conv, numbered, required, upsampler
from upres.models.descriptor import ModelDescriptor

NAME = "RLFN"
SLOPE = 0.05


class LocalFeatureBlock(nn.Module):
    def __init__(self, channels: int, mid: int, esa_channels: int) -> None:
        super().__init__()
        self.c1_r, self.c2_r, self.c3_r = conv(channels, mid, 3), conv(mid, mid, 3), conv(mid, channels, 3)
        self.c5 = conv(channels, channels, 1)
        self.esa = ESA(channels, esa_channels, deep=False)
        self.act = nn.LeakyReLU(SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.c3_r(self.act(self.c2_r(self.act(self.c1_r(x))))))
        return self.esa(self.c5(out + x))


class RLFN(nn.Module):
    def __init__(self, in_nc: int = 3, nf: int = 46, mf: int = 48, num_blocks: int = 4,
                 esa_channels: int = 16, out_nc: int = 3, upscale: int = 4,
                 img_range: float = 255.0) -> None:
        super().__init__()
        # img_range: the published files take and give pixel values 0..255
        self.hparams = dict(in_nc=in_nc, nf=nf, mf=mf, num_blocks=num_blocks, esa_channels=esa_channels,
                            out_nc=out_nc, upscale=upscale, img_range=img_range)
        self.fea_conv = conv(in_nc, nf, 3)
        for i in range(1, num_blocks + 1):  # B1 ... Bn
            setattr(self, f"B{i}", LocalFeatureBlock(nf, mf, esa_channels))
        self.LR_conv = conv(nf, nf, 3)
        self.upsampler = upsampler(nf, out_nc, upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = out = self.fea_conv(x * self.hparams["img_range"])
        for i in range(1, self.hparams["num_blocks"] + 1):
            out = getattr(self, f"B{i}")(out)
        return self.upsampler(self.LR_conv(out) + feat) / self.hparams["img_range"]


def describe(model: RLFN) -> ModelDescriptor:
    h = model.hparams
    return ModelDescriptor(arch=NAME, scale=h["upscale"], in_channels=h["in_nc"], out_channels=h["out_nc"],
                           min_size=ESA.MIN_SIZE, dtypes=("fp32", "bf16"),
                           activation_channels=max(h["nf"], h["mf"]) * 2, hparams=dict(h))


def detect(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(k in state_dict for k in ("fea_conv.weight", "B1.c1_r.weight", "B1.c5.weight",
                                         "B1.esa.conv1.weight", "LR_conv.weight")) \
        and "B1.c1_d.weight" not in state_dict and "B1.esa.conv_max.weight" not in state_dict


def infer_hparams(state_dict: dict[str, torch.Tensor], source: str = "state dict") -> dict:
    head, up, mid, esa = required(state_dict, source, "an RLFN", "fea_conv.weight", "upsampler.0.weight",
                                  "B1.c1_r.weight", "B1.esa.conv1.weight")
    out_nc, upscale = channels_and_scale(up)
    return dict(in_nc=head.shape[1], nf=head.shape[0], mf=mid.shape[0],
                num_blocks=numbered(state_dict, r"B(\d+)\."), esa_channels=esa.shape[0],
                out_nc=out_nc, upscale=upscale)
