"""How much memory inference may use and how much a model needs per input pixel.

The footprints are measured, not guessed: ``benchmarks/bench_memory.py`` runs each architecture,
backend and dtype in a fresh process at two input sizes, takes the peak RSS (VmHWM) growth per
input pixel, divides by the model's ``activation_channels`` (activation memory grows with the
feature width), and writes ``footprints.json`` beside this file. On CUDA the footprint is
measured on the spot (``torch_backend.measure_cuda``)."""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path

from upres.errors import InferenceError
from upres.models.descriptor import ModelDescriptor

FOOTPRINTS = Path(__file__).with_name("footprints.json")
BUDGET_FRACTION = 0.5  # of the memory available when the job starts


@lru_cache(maxsize=1)
def footprints() -> dict:
    return json.loads(FOOTPRINTS.read_text())


def bytes_per_pixel(descriptor: ModelDescriptor, backend: str, dtype: str) -> float | None:
    """Peak bytes per input pixel for batch 1 (activations and output), or None if unmeasured."""
    table = footprints()["bytes_per_pixel_per_channel"].get(descriptor.arch, {})
    per_channel = table.get(f"{backend}-{dtype}")
    return None if per_channel is None else per_channel * descriptor.activation_channels


def available_memory() -> int:
    """Bytes of memory available to a new allocation (Linux MemAvailable, else free pages)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def process_rss() -> int:
    """Bytes this process holds now (libraries, models): what a --max-memory cap already spends."""
    try:
        match = re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return 0
    return int(match.group(1)) * 1024 if match else 0


def default_budget(device: str) -> int:
    """A safe share of what is free: half the available RAM, or of the free GPU memory."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free * BUDGET_FRACTION)
    return int(available_memory() * BUDGET_FRACTION)


def process_budget(max_memory: int | str | None, device: str) -> int:
    """Bytes for activations, bands and the input. ``max_memory`` is a target for the whole
    process on the CPU, so what it already holds (libraries, the model) is taken off; the
    default is half of what is free."""
    cap = parse_size(max_memory)
    if cap is None:
        return default_budget(device)
    held = process_rss() if device == "cpu" else 0
    if cap - held <= 0:
        raise InferenceError(f"--max-memory {max_memory} is below what this process already "
                             f"holds ({held / 2**30:.2f} GiB: libraries and the model)")
    return cap - held


def parse_size(text: str | int | None) -> int | None:
    """``8G``, ``512M``, ``2.5GiB`` or a number of bytes."""
    if text is None or isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not match:
        raise InferenceError(f"memory size {text!r}: expected e.g. 8G, 512M or a byte count")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)
