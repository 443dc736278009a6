"""What every consumer of a model (engine, training, predict, export) needs to know about it, in
one typed record built by the architecture's own module, so none of them has to duck-type the
network. Modelled on spandrel's ``ImageModelDescriptor``."""

from __future__ import annotations

from dataclasses import dataclass, field

DTYPE_NAMES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class ModelDescriptor:
    arch: str  # architecture name, a key of ``upres.models.ARCHITECTURES``
    scale: int  # output side / input side
    in_channels: int = 3
    out_channels: int = 3
    size_multiple: int = 1  # input height and width must be multiples of this (the engine pads)
    min_size: int = 0  # input height and width must be at least this (the engine pads)
    dtypes: tuple[str, ...] = DTYPE_NAMES  # compute dtypes that give correct output
    activation_channels: int = 64  # the width activation memory grows with (see inference.memory)
    hparams: dict = field(default_factory=dict)  # constructor arguments; rebuild with build_model

    def supports(self, dtype: str) -> bool:
        return dtype in self.dtypes
