"""``RUN/auto.json``, the run's journal (its fields: docs/reference/auto-json.md), and what the
phases share (``AutoRun``). Each phase's figures and decisions are recorded when it ends, so a
resumed run skips what is done."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from upres.auto.clock import Clock, minutes
from upres.errors import UpresError
from upres.inference.shard import Shard
from upres.io.files import atomic_write_bytes
from upres.io.pairs import Pair
from upres.io.pretrained import PRETRAINED, pretrained_available
from upres.io.published import PUBLISHED, installed_path

# The journal's version (docs/reference/auto-json.md): fields may be added within a version, never
# renamed or given another meaning; READS lists the versions this upres resumes and renders.
FORMAT = "upres-auto/1"
READS = (FORMAT,)


class AutoError(UpresError):
    """``upres auto`` cannot run as asked (the message says why, with the figures)."""


def installed_starts() -> tuple[str, ...]:
    """The named starts ``auto`` tries by default: the installed pretrained models (GAN-trained,
    for looks) and the installed published PSNR-trained ones (``upres models pull NAME``)."""
    return (*(n for n in PRETRAINED if pretrained_available(n)),
            *(n for n in PUBLISHED if installed_path(n) is not None))


@dataclass
class AutoOptions:
    budget: float  # seconds of wall-clock time for the whole run
    device: str = "auto"
    seed: int = 0
    # the named starts tried: by default every installed pretrained and published model
    pretrained: tuple[str, ...] = field(default_factory=installed_starts)
    candidates: tuple[str, ...] = ()  # the user's own weights files, tried as starts
    presets: str = "auto"  # "auto" (on an accelerator), "none" or names: presets from scratch
    cache_dir: str | None = None
    progress: bool = True


class Journal:
    """``auto.json``: every phase's measured figures and decisions, written atomically when a
    phase ends; a resumed run skips the phases it holds."""

    def __init__(self, path: Path, data: dict, main: bool = True) -> None:
        self.path, self.data, self.main = path, data, main  # only rank 0 writes

    @classmethod
    def open(cls, out: Path, resume: bool, options: dict) -> Journal:
        path = out / "auto.json"
        if resume:
            if not path.exists():
                raise AutoError(f"{out}: nothing to resume (no auto.json); run without --resume")
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise AutoError(f"{path}: not readable ({err}); move the folder away") from None
            if not isinstance(data, dict) or "format" not in data:
                raise AutoError(f"{path}: not an upres auto record")
            if data["format"] not in READS:
                raise AutoError(f"{path}: format {str(data['format'])[:40]!r}, which this upres does not "
                                f"read (it reads {', '.join(READS)}); resume it with the upres that "
                                "wrote it, or start a new --out")
            return cls(path, data)
        if out.exists() and any(out.iterdir()):
            raise AutoError(f"{out}: the folder holds files already; pass --resume to continue "
                            "that run, or choose a new --out")
        return cls(path, {"format": FORMAT, "options": options, "phases": {}, "spent": 0.0})

    def done(self, phase: str) -> bool:
        return phase in self.data["phases"]

    def __getitem__(self, phase: str) -> dict:
        return self.data["phases"][phase]

    def record(self, phase: str, result: dict, clock: Clock, started: float) -> dict:
        result = {**result, "began": round(started, 2),
                  "seconds": round(clock.elapsed() - started, 2)}
        self.data["phases"][phase] = result
        self.save(clock)
        return result

    def save(self, clock: Clock) -> None:
        self.data["spent"] = round(clock.elapsed(), 2)
        if self.main:
            text = json.dumps(self.data, indent=1, default=_plain)
            atomic_write_bytes(self.path, (text + "\n").encode())


@dataclass
class AutoRun:
    """What the phases share: the folders, options, clock, journal and this process's shard."""

    data: Path
    out: Path
    options: AutoOptions
    clock: Clock
    journal: Journal
    shard: Shard
    say: Callable[[str], None]
    pairs: list[Pair] = field(default_factory=list)
    val_pairs: list[Pair] = field(default_factory=list)  # from DATA/val, when it exists
    scale: int = 4
    end_speed: float = 1.0  # the end's inference time as timed at the levers over the estimate
    test_per_mp: dict[str, float] = field(default_factory=dict)  # an arm timed on a test image

    def phase(self, name: str, work: Callable[[AutoRun], dict]) -> dict:
        """Run a phase once: rank 0 does the work, records it and tells the other ranks, whose
        journals hold it too (later phases read it there)."""
        if self.journal.done(name):
            return self.journal[name]
        started = self.clock.elapsed()
        self.say(f"[{minutes(started)} / {minutes(self.clock.budget)}] {name} ...")
        result = self.journal.record(name, work(self), self.clock, started) if self.shard.main else None
        result = self.shard.broadcast(result)
        self.journal.data["phases"][name] = result
        return result


def _plain(value):
    """NumPy scalars (measured figures) as JSON numbers and booleans."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def jsonable(options: AutoOptions) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(options).items()
            if k != "progress"}


@dataclass
class AutoResult:
    out: Path
    submission: Path
    record: dict


def reopen_bicubic(journal: Journal) -> None:
    """A run that ended in bicubic, resumed with a larger budget, probes again (the budget may
    now train a start); what the earlier phases measured is kept."""
    probes = journal.data["phases"].get("probes", {})
    if probes.get("bicubic") and journal.data["options"]["budget"] > probes["budget"]:
        for phase in ("probes", "end", "submit"):
            journal.data["phases"].pop(phase, None)
