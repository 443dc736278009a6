"""Whether a training step can fit in memory, checked before the first step: a
``train.batch_size`` of 20000 had trained for six minutes (decoding, loading crops) and ended in
the allocator's traceback. The estimate is a lower bound, so only what cannot fit is refused:
every module's output at the crop (what autograd keeps for the backward pass), found by one
forward pass on PyTorch's meta device (shapes only, no memory), times the batch; plus the
weights, their gradients, Adam's two moments and the EMA copy."""

from __future__ import annotations

import torch
from torch import nn

from upres.errors import ArchitectureError, ConfigError
from upres.inference.memory import available_memory
from upres.models.registry import build_model, describe

FLOAT_BYTES = 4
WEIGHT_COPIES = 5  # weights, gradients, Adam's two moments, the EMA copy


def meta_model(arch: str, hparams: dict) -> nn.Module | None:
    """The network with its shapes only (PyTorch's meta device: no memory, no time); None for a
    family whose constructor reads values (HAT, MoSR call ``Tensor.item()``), which the meta
    device does not have. Bad hyperparameters are an ``ArchitectureError`` as on the CPU."""
    try:
        with torch.device("meta"):
            return build_model(arch, hparams)
    except ArchitectureError as err:
        if "meta" in str(err):
            return None
        raise


def activation_elements(model: nn.Module, lr_side: int, in_channels: int) -> int | None:
    """Elements of every leaf module's output for one (1, C, lr_side, lr_side) input to a meta
    model, or None where the family does not run on the meta device."""
    total = [0]

    def count(_module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            total[0] += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.empty(1, in_channels, lr_side, lr_side, device="meta"))
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return None
    finally:
        for hook in hooks:
            hook.remove()
    return total[0]


def check_step_fits(cfg, device: str) -> None:
    """Refuse, before the network is built, a model, batch and crop whose training step cannot
    fit the memory there is, naming the options and the largest batch that could."""
    model = meta_model(cfg.model.arch, cfg.model.hparams())
    if model is None:
        return
    weights = FLOAT_BYTES * WEIGHT_COPIES * sum(p.numel() for p in model.parameters())
    per_item = activation_elements(model, cfg.data.crop // cfg.model.scale, describe(model).in_channels)
    if per_item is None:
        return
    per_item *= FLOAT_BYTES
    need = weights + per_item * cfg.train.batch_size
    if device.startswith("cuda"):
        have, where = torch.cuda.mem_get_info(torch.device(device))[0], "free on the GPU"
    else:
        have, where = available_memory(), "available"
    if need <= have:
        return
    fits = int((have - weights) // per_item) if per_item else 0
    if weights > have:
        advice = f"the network alone ({weights / 2**30:.1f} GiB with its training state) does not fit"
    elif fits >= 1:
        advice = f"set train.batch_size={fits} or lower"
    else:
        advice = "lower data.crop (one crop alone does not fit)"
    raise ConfigError(f"train.batch_size {cfg.train.batch_size} with data.crop {cfg.data.crop}: a "
                      f"training step needs at least {need / 2**30:.1f} GiB, over the "
                      f"{have / 2**30:.1f} GiB {where}; {advice}")
