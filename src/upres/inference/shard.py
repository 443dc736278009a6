"""Work across processes: under ``torchrun`` (WORLD_SIZE > 1) each process is a shard with its
rank and its own device (``cuda:LOCAL_RANK`` where there are GPUs); it takes every world-th
input, and the processes agree through ``torch.distributed`` (NCCL on GPUs, gloo on CPUs).
Inference and training (DDP) share it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from upres.inference.devices import resolve_device

# How long a process waits for the others at a collective. Rank 0 works alone at times while the
# rest wait (validation; in `upres auto` the measuring phases and the test set's prediction,
# which on a large test set with self-ensemble runs for many minutes); NCCL's default of 10
# minutes would end such a run half-way.
WAIT = timedelta(hours=4)


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    device: str = "cpu"  # this process's device, resolved (cpu, cuda:1, mps)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def take(self, items: list) -> list:
        """This process's share: every world-th item, starting at its rank."""
        return items[self.rank::self.world]

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, value) -> list:
        """Every process's ``value``, in rank order (on every process)."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def broadcast(self, value):
        """Rank 0's ``value`` on every process."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def current_shard(device: str = "auto") -> Shard:
    """This process's shard and its device; starts the process group under torchrun. A single
    process on a machine without a GPU imports no PyTorch here."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Shard(device=resolve_device(device))
    import torch
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=WAIT)
    return Shard(rank, world, device if use_cuda else resolve_device(device))
