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

Everything RRDBNet-specific lives here: the network, its state-dict detector
(``infer_hparams``), its descriptor, and the layer order of its ncnn exports.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

from upres.errors import ArchitectureError, WeightsError
from upres.models.descriptor import ModelDescriptor

NAME = "RRDBNet"
# The one unshuffle table: scale -> pixel-unshuffle factor of the input. The body always runs at
# 1/4 of the output resolution, so x2 models unshuffle by 2 and x1 models by 4; conv_first then
# takes num_in_ch * factor**2 channels, and input sides must be multiples of the factor.
UNSHUFFLE = {4: 1, 2: 2, 1: 4}


def _scaled_kaiming_(modules: list[nn.Module], scale: float) -> None:
    """BasicSR's ``default_init_weights``: Kaiming-normal weights times ``scale``, zero bias."""
    for module in modules:
        if module.weight.is_meta:  # built to be loaded (upres.io.loading): nothing to draw
            continue
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
        if scale not in UNSHUFFLE:
            raise ArchitectureError(f"RRDBNet supports scale 1, 2 or 4, not {scale}")
        for name, value in (("num_in_ch", num_in_ch), ("num_out_ch", num_out_ch),
                            ("num_feat", num_feat), ("num_block", num_block),
                            ("num_grow_ch", num_grow_ch)):
            if value < 1:
                raise ArchitectureError(f"RRDBNet {name} must be >= 1, got {value}")
        post_up_blocks = [int(n) for n in post_up_blocks]
        if len(post_up_blocks) > 2 or any(n < 1 for n in post_up_blocks):
            raise ArchitectureError(f"post_up_blocks takes at most two positive block counts (after the "
                             f"first and second upsampling), got {post_up_blocks}")
        self.hparams = dict(num_in_ch=num_in_ch, num_out_ch=num_out_ch, scale=scale,
                            num_feat=num_feat, num_block=num_block, num_grow_ch=num_grow_ch)
        if post_up_blocks or gated or rotation:  # only variants record the extra keys
            self.hparams.update(post_up_blocks=post_up_blocks, gated=gated, rotation=rotation)
        self.scale = scale
        self.rotation = rotation
        unshuffled_in_ch = num_in_ch * UNSHUFFLE[scale] ** 2
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
            x = F.pixel_unshuffle(x, UNSHUFFLE[self.scale])
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for k, conv_up in enumerate((self.conv_up1, self.conv_up2), start=1):
            feat = F.leaky_relu(conv_up(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
            if k <= self.num_post_up:
                feat = feat + getattr(self, f"conv_body_up{k}")(getattr(self, f"body_up{k}")(feat))
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


def describe(model: RRDBNet) -> ModelDescriptor:
    """RRDBNet and all its variants run correctly in fp32, bf16 and fp16."""
    h = model.hparams
    # Activation memory grows with num_feat (the feature maps at the output resolution dominate).
    # Measured by benchmarks/bench_memory.py: the rotation model's two batched branches need
    # 1.9x the plain model in PyTorch, post-upsampling RRDB groups up to 1.6x; both are
    # counted as 2x.
    factor = (2 if h.get("rotation") else 1) * (2 if h.get("post_up_blocks") else 1)
    return ModelDescriptor(arch=NAME, scale=h["scale"], in_channels=h["num_in_ch"],
                           out_channels=h["num_out_ch"], size_multiple=UNSHUFFLE[h["scale"]],
                           activation_channels=h["num_feat"] * factor, hparams=dict(h))


def detect(state_dict: dict[str, torch.Tensor]) -> bool:
    """True for BasicSR-layout RRDBNet state dicts (and our variants)."""
    return all(k in state_dict for k in ("conv_first.weight", "conv_last.weight",
                                         "body.0.rdb1.conv1.weight"))


# The original ESRGAN repository's two layouts -> BasicSR's names (the same tensors): the 2019
# names (RRDB_trunk, trunk_conv, upconv1, ...) and the 2018 sequential ones (model.0, model.1.sub.N,
# ...; "old arch" in chaiNNer), in which published files such as RRDB_PSNR_x4.pth circulate.
_ESRGAN_NAMES = ((r"^RRDB_trunk\.", "body."), (r"\.RDB(\d)\.", r".rdb\1."), (r"^trunk_conv\.", "conv_body."),
                 (r"^upconv(\d)\.", r"conv_up\1."), (r"^HRconv\.", "conv_hr."))
_OLD_ARCH = {"model.0.": "conv_first.", "model.3.": "conv_up1.", "model.6.": "conv_up2.",
             "model.8.": "conv_hr.", "model.10.": "conv_last."}


def _old_arch_name(key: str, last_block: int) -> str:
    if m := re.match(r"model\.1\.sub\.(\d+)\.(.*)$", key):
        block, rest = int(m.group(1)), m.group(2)
        if block == last_block:  # the trunk's closing convolution
            return f"conv_body.{rest}"
        rest = re.sub(r"^RDB(\d)\.conv(\d)\.0\.", r"rdb\1.conv\2.", rest)
        return f"body.{block}.{rest}"
    prefix = next((p for p in _OLD_ARCH if key.startswith(p)), None)
    return _OLD_ARCH[prefix] + key[len(prefix):] if prefix else key


def basicsr_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict in either of the original ESRGAN repository's layouts renamed to BasicSR's, so
    those published files load strictly into ``RRDBNet``; any other state dict is returned as is."""
    if "RRDB_trunk.0.RDB1.conv1.weight" in state_dict and "trunk_conv.weight" in state_dict:
        renamed = {}
        for key, tensor in state_dict.items():
            for pattern, repl in _ESRGAN_NAMES:
                key = re.sub(pattern, repl, key)
            renamed[key] = tensor
        return renamed
    if "model.1.sub.0.RDB1.conv1.0.weight" in state_dict and "model.0.weight" in state_dict:
        last = max(int(m.group(1)) for k in state_dict if (m := re.match(r"model\.1\.sub\.(\d+)\.", k)))
        return {_old_arch_name(key, last): tensor for key, tensor in state_dict.items()}
    return state_dict


def infer_hparams(state_dict: dict[str, torch.Tensor], source: str = "state dict") -> dict:
    """Recover RRDBNet's hyperparameters from tensor shapes (scale from the unshuffle factor)."""
    try:
        first = state_dict["conv_first.weight"]
        last = state_dict["conv_last.weight"]
        grow = state_dict["body.0.rdb1.conv1.weight"]
    except KeyError as err:
        raise WeightsError(f"{source}: not an RRDBNet state dict (missing {err.args[0]!r})") from None
    num_out_ch = last.shape[0]
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"body\.(\d+)\.", k))}
    in_ch = first.shape[1]
    # Unshuffled channels are num_in_ch * factor**2; assume num_in_ch == num_out_ch when ambiguous.
    ratio = in_ch // num_out_ch if in_ch % num_out_ch == 0 else 1
    scale = next((s for s, f in UNSHUFFLE.items() if f * f == ratio), 4)
    num_in_ch = in_ch // UNSHUFFLE[scale] ** 2
    hparams = dict(num_in_ch=num_in_ch, num_out_ch=num_out_ch, scale=scale, num_feat=first.shape[0],
                   num_block=max(blocks) + 1 if blocks else 0, num_grow_ch=grow.shape[0])
    post_up = []
    for k in (1, 2):
        found = {int(m.group(1)) for key in state_dict
                 if (m := re.match(rf"body_up{k}\.(\d+)\.", key))}
        if found:
            post_up.append(max(found) + 1)
    gated = "body.0.rdb1.gate1.weight" in state_dict
    if post_up or gated:  # rotation leaves no trace in shapes (our metadata records it)
        hparams.update(post_up_blocks=post_up, gated=gated)
    return hparams


def ncnn_layer_names(num_convolutions: int, source: str) -> list[str]:
    """BasicSR module names of an ncnn RRDBNet x4 export's convolutions, in file order:
    conv_first, 15 per block, then conv_body, conv_up1, conv_up2, conv_hr, conv_last."""
    if num_convolutions < 6 or (num_convolutions - 6) % 15:
        raise WeightsError(f"{source}: {num_convolutions} convolutions do not make an RRDBNet "
                           "(expected 6 + 15 per block)")
    names = ["conv_first"]
    for b in range((num_convolutions - 6) // 15):
        names += [f"body.{b}.rdb{r}.conv{c}" for r in (1, 2, 3) for c in (1, 2, 3, 4, 5)]
    return names + ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
