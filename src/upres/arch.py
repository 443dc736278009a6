"""RRDBNet, the ESRGAN / Real-ESRGAN generator, with BasicSR's parameter names, and the
recipe's variants.

With default arguments the parameter names and shapes match ``basicsr.archs.rrdbnet_arch.RRDBNet``
exactly, so public checkpoints load with ``strict=True`` and ours load in BasicSR, Real-ESRGAN,
spandrel and chaiNNer. Each model records its constructor arguments in ``hparams`` so that weights
files can carry them. Variants (their weights load only in upres):

- ``post_up_blocks=[n1]`` / ``[n1, n2]``: RRDB groups after the first / each upsampling step
  (layouts I-R-U-R-U-O and I-R-U-R-U-R-O; the default ``[]`` is I-R-U-U-O); new modules are
  ``body_up{k}`` and ``conv_body_up{k}``, the BasicSR names stay as they are.
- ``gated=True``: each dense-block convolution ``convJ`` becomes ``tanh(convJ(x)) *
  sigmoid(gateJ(x))`` (WaveNet / PixelCNN++ gating); ``convJ`` keeps its name, so pretrained
  weights still initialise it.
- ``rotation=True``: the input is rotated by 0/90/180/270 degrees, each copy runs through the
  same network, is rotated back, and the four are averaged, inside the model (train and test).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

ARCHITECTURES = ("RRDBNet",)


def _scaled_kaiming_(modules: list[nn.Module], scale: float) -> None:
    """BasicSR's ``default_init_weights``: Kaiming-normal weights times ``scale``, zero bias."""
    for module in modules:
        nn.init.kaiming_normal_(module.weight)
        module.weight.data.mul_(scale)
        if module.bias is not None:
            module.bias.data.zero_()


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convolutions with a 0.2-scaled residual; optionally gated."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32, gated: bool = False) -> None:
        super().__init__()
        ins = [num_feat + i * num_grow_ch for i in range(5)]
        outs = [num_grow_ch] * 4 + [num_feat]
        for j, (cin, cout) in enumerate(zip(ins, outs), start=1):
            setattr(self, f"conv{j}", nn.Conv2d(cin, cout, 3, 1, 1))
        convs = [self.conv1, self.conv2, self.conv3, self.conv4, self.conv5]
        _scaled_kaiming_(convs, 0.1)
        self.gated = gated
        if gated:
            for j, (cin, cout) in enumerate(zip(ins, outs), start=1):
                setattr(self, f"gate{j}", nn.Conv2d(cin, cout, 3, 1, 1))
            _scaled_kaiming_([getattr(self, f"gate{j}") for j in range(1, 6)], 0.1)

    def _layer(self, j: int, x: torch.Tensor, last: bool = False) -> torch.Tensor:
        out = getattr(self, f"conv{j}")(x)
        if self.gated:
            return torch.tanh(out) * torch.sigmoid(getattr(self, f"gate{j}")(x))
        return out if last else F.leaky_relu(out, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self._layer(1, x)
        x2 = self._layer(2, torch.cat((x, x1), 1))
        x3 = self._layer(3, torch.cat((x, x1, x2), 1))
        x4 = self._layer(4, torch.cat((x, x1, x2, x3), 1))
        x5 = self._layer(5, torch.cat((x, x1, x2, x3, x4), 1), last=True)
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks and a 0.2-scaled residual."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32, gated: bool = False) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch, gated)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch, gated)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch, gated)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN generator. Scales 2 and 1 pixel-unshuffle the input first, as BasicSR does, so the
    body always runs at 1/4 of the output resolution and the two x2 upsamplers stay in place."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
        post_up_blocks: list[int] | tuple[int, ...] = (),
        gated: bool = False,
        rotation: bool = False,
    ) -> None:
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet supports scale 1, 2 or 4, not {scale}")
        for name, value in (("num_in_ch", num_in_ch), ("num_out_ch", num_out_ch),
                            ("num_feat", num_feat), ("num_block", num_block),
                            ("num_grow_ch", num_grow_ch)):
            if value < 1:
                raise ValueError(f"RRDBNet {name} must be >= 1, got {value}")
        post_up_blocks = [int(n) for n in post_up_blocks]
        if len(post_up_blocks) > 2 or any(n < 1 for n in post_up_blocks):
            raise ValueError(f"post_up_blocks takes at most two positive block counts (after the "
                             f"first and second upsampling), got {post_up_blocks}")
        self.hparams = dict(num_in_ch=num_in_ch, num_out_ch=num_out_ch, scale=scale,
                            num_feat=num_feat, num_block=num_block, num_grow_ch=num_grow_ch)
        if post_up_blocks or gated or rotation:  # only variants record the extra keys
            self.hparams.update(post_up_blocks=post_up_blocks, gated=gated, rotation=rotation)
        self.scale = scale
        self.rotation = rotation
        unshuffled_in_ch = num_in_ch * {4: 1, 2: 4, 1: 16}[scale]
        self.conv_first = nn.Conv2d(unshuffled_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(num_feat, num_grow_ch, gated) for _ in range(num_block)))
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        for k, n in enumerate(post_up_blocks, start=1):
            setattr(self, f"body_up{k}",
                    nn.Sequential(*(RRDB(num_feat, num_grow_ch, gated) for _ in range(n))))
            setattr(self, f"conv_body_up{k}", nn.Conv2d(num_feat, num_feat, 3, 1, 1))
        self.num_post_up = len(post_up_blocks)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    @property
    def input_multiple(self) -> int:
        """Input height and width must be multiples of this (pixel-unshuffle factor)."""
        return {4: 1, 2: 2, 1: 4}[self.scale]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.rotation:
            return self._forward(x)
        # Rotation model: 0/180 keep the shape, 90/270 transpose it; one batch per shape.
        straight = self._forward(torch.cat([x, torch.rot90(x, 2, (2, 3))]))
        turned = self._forward(torch.cat([torch.rot90(x, 1, (2, 3)), torch.rot90(x, 3, (2, 3))]))
        n = x.shape[0]
        return (straight[:n] + torch.rot90(straight[n:], -2, (2, 3))
                + torch.rot90(turned[:n], -1, (2, 3)) + torch.rot90(turned[n:], -3, (2, 3))) / 4

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale != 4:
            x = F.pixel_unshuffle(x, self.input_multiple)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for k, conv_up in enumerate((self.conv_up1, self.conv_up2), start=1):
            feat = F.leaky_relu(conv_up(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
            if k <= self.num_post_up:
                feat = feat + getattr(self, f"conv_body_up{k}")(getattr(self, f"body_up{k}")(feat))
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


def build_model(arch: str, hparams: dict) -> nn.Module:
    """Build an architecture by name from recorded hyperparameters."""
    if arch != "RRDBNet":
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return RRDBNet(**hparams)
