"""``train.compile``: a compiled training step is used only after it is checked against eager.

Inductor has given wrong RRDBNet output on this project's CPU (with ``freezing=True``), so a
compiled network is not trusted by default: on the first batch the compiled and eager forward
passes and the gradients of the loss are compared; where they differ by more than the precision
explains, the run says so and trains eager.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from upres.inference.torch_backend import autocast_context

# Relative error (||compiled - eager|| / ||eager||) a correct compilation stays under: fp32 only
# reorders sums (about 1e-6 measured); bf16 / fp16 autocast also rounds where fusions differ.
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 3e-2, torch.float16: 3e-2}


@dataclass
class CompileCheck:
    ok: bool
    output_error: float  # relative error of the network's output
    grad_error: float  # of the parameters' gradients
    tolerance: float

    def sentence(self) -> str:
        grads = f", gradients {self.grad_error:.1e}"
        if self.ok:
            return (f"train.compile: checked against eager on the first batch (relative error: "
                    f"output {self.output_error:.1e}{grads}; tolerance {self.tolerance:.0e})")
        return (f"warning: train.compile: the compiled network differs from eager on the first "
                f"batch (relative error: output {self.output_error:.1e}{grads}; tolerance "
                f"{self.tolerance:.0e}); training runs eager")


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("inf")
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-12))


def _loss_and_grads(net: Callable, model: nn.Module, lr: torch.Tensor, hr: torch.Tensor,
                    loss: Callable, amp_dtype: torch.dtype) -> tuple:
    with autocast_context(lr.device, amp_dtype):
        out = net(lr)
    loss(out.float(), hr).backward()
    flat = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return out.detach(), flat


def check_compiled(model: nn.Module, compiled: Callable, eager: Callable, lr: torch.Tensor,
                   hr: torch.Tensor, loss: Callable, amp_dtype: torch.dtype) -> CompileCheck:
    """Run ``compiled`` and ``eager`` (the same network, parameters shared) on one batch and
    compare their outputs and the loss's gradients. The parameters' gradients are left cleared;
    nothing else changes (these networks draw no random numbers)."""
    model.zero_grad(set_to_none=True)
    out_c, grad_c = _loss_and_grads(compiled, model, lr, hr, loss, amp_dtype)
    out_e, grad_e = _loss_and_grads(eager, model, lr, hr, loss, amp_dtype)
    tolerance = TOLERANCE.get(amp_dtype, TOLERANCE[torch.float32])
    out_err = _relative(out_c, out_e)
    grad_err = _relative(grad_c, grad_e)
    ok = out_err <= tolerance and grad_err <= tolerance
    return CompileCheck(ok, out_err, grad_err, tolerance)
