"""SPAN in its re-parameterised form (Wan et al., "Swift Parameter-free Attention Network for
Efficient Super-Resolution", CVPRW 2024; NTIRE 2024 efficient SR winner), as published for
inference: every Conv3XC (1x1 -> 3x3 -> 1x1 plus a 1x1 skip while training) fused into the one
3x3 convolution the authors name ``eval_conv``. spandrel's ``SPAN`` family is the training
form; this one loads the fused files strictly, fine-tunes them as plain 3x3 layers and saves
them back in the same layout. Attention is parameter-free: sigmoid(x) - 1/2 of each block's
last layer gates its output."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from upres.models.blocks import channels_and_scale, conv, required, upsampler
from upres.models.descriptor import ModelDescriptor

NAME = "SPANFused"
BLOCKS = 6  # SPAN's depth; its fusion layer reads blocks 1 and 6 by position
RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K's mean colour, subtracted when ``norm``


class FusedConv(nn.Module):
    """A Conv3XC after fusion: one 3x3 convolution under the authors' name."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.eval_conv = conv(cin, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.eval_conv(x)


class AttentionBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.c1_r, self.c2_r, self.c3_r = (FusedConv(channels, channels) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The authors' SiLU runs in place, so the first layer's output they pass on to the
        # fusion (from the last block) is the activated one.
        first = F.silu(self.c1_r(x))
        last = self.c3_r(F.silu(self.c2_r(first)))
        return (last + x) * (torch.sigmoid(last) - 0.5), first


class SPANFused(nn.Module):
    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, feature_channels: int = 48,
                 upscale: int = 4, norm: bool = True) -> None:
        super().__init__()
        self.hparams = dict(num_in_ch=num_in_ch, num_out_ch=num_out_ch, feature_channels=feature_channels,
                            upscale=upscale, norm=norm)
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.conv_1 = FusedConv(num_in_ch, feature_channels)
        for i in range(1, BLOCKS + 1):  # block_1 ... block_6
            setattr(self, f"block_{i}", AttentionBlock(feature_channels))
        self.conv_cat = conv(feature_channels * 4, feature_channels, 1)
        self.conv_2 = FusedConv(feature_channels, feature_channels)
        self.upsampler = upsampler(feature_channels, num_out_ch, upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams["norm"]:  # the authors' input scaling: mean removed, 0..255
            x = (x - self.mean.to(x.dtype)) * 255.0
        feat = self.conv_1(x)
        out, first = feat, feat
        outs = []
        for i in range(1, BLOCKS + 1):
            out, first = getattr(self, f"block_{i}")(out)
            outs.append(out)
        fused = self.conv_cat(torch.cat([feat, self.conv_2(out), outs[0], first], 1))
        return self.upsampler(fused)


def describe(model: SPANFused) -> ModelDescriptor:
    h = model.hparams
    return ModelDescriptor(arch=NAME, scale=h["upscale"], in_channels=h["num_in_ch"],
                           out_channels=h["num_out_ch"], dtypes=("fp32", "bf16"),
                           activation_channels=h["feature_channels"] * 4, hparams=dict(h))


def detect(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(k in state_dict for k in ("conv_1.eval_conv.weight", "block_1.c1_r.eval_conv.weight",
                                         "conv_cat.weight", "upsampler.0.weight")) \
        and "conv_1.sk.weight" not in state_dict


def infer_hparams(state_dict: dict[str, torch.Tensor], source: str = "state dict") -> dict:
    head, up = required(state_dict, source, "a fused SPAN", "conv_1.eval_conv.weight", "upsampler.0.weight")
    out_ch, upscale = channels_and_scale(up)
    return dict(num_in_ch=head.shape[1], num_out_ch=out_ch, feature_channels=head.shape[0], upscale=upscale)
