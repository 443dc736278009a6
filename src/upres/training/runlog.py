"""A training run's log (metrics.jsonl, TensorBoard, the progress bar) and the stop flag that
turns SIGINT / SIGTERM into a checkpoint and a clean exit."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from upres.errors import DiskFullError
from upres.inference.shard import Shard
from upres.io.files import atomic_write_bytes, out_of_space, read_jsonl
from upres.training.checkpoints import TrainState


class PhaseClock:
    """Seconds spent per phase of a run (``with clock("validation"): ...``), for its page."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - start)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds



class RunLog:
    """``metrics.jsonl``, TensorBoard curves and the progress bar, written by rank 0 only and
    closed on every exit path (a context manager). After a resume, what the interrupted run
    logged past its checkpoint is dropped (TensorBoard ``purge_step``, ``metrics.jsonl``), so
    each step appears once."""

    def __init__(self, shard: Shard, run_dir: Path, iterations: int, step: int, resumed: bool,
                 progress: bool, clock: PhaseClock | None = None) -> None:
        self.shard, self.run_dir = shard, run_dir
        self.iterations, self.step, self.resumed = iterations, step, resumed
        self.progress, self.clock = progress, clock or PhaseClock()
        self.warned = False
        self.writer = self.file = self.bar = None
        self.start_clock()

    def __enter__(self) -> RunLog:
        from tqdm import tqdm

        self.bar = tqdm(total=self.iterations, initial=self.step, desc="train", unit="it",
                        disable=not (self.shard.main and self.progress), dynamic_ncols=True)
        if self.shard.main:
            from torch.utils.tensorboard import SummaryWriter

            run_dir = self.run_dir
            self.writer = SummaryWriter(str(run_dir / "tb"),
                                        purge_step=self.step + 1 if self.resumed else None)
            log_path = run_dir / "metrics.jsonl"
            if self.resumed and log_path.exists():
                kept = [r for r in read_jsonl(log_path) if r.get("step", 0) <= self.step]
                atomic_write_bytes(log_path, "".join(json.dumps(r) + "\n" for r in kept).encode())
            self.file = open(log_path, "a")
        return self

    def __exit__(self, *exc) -> None:
        for thing in (self.bar, self.writer, self.file):
            if thing is not None:
                thing.close()

    def start_clock(self) -> None:
        self.tick_time, self.tick_step = time.perf_counter(), self.step

    def record(self, record: dict) -> None:
        if not self.shard.main:
            return
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as err:
            if out_of_space(err, self.run_dir):
                raise DiskFullError(f"no space left on device while writing {self.file.name}") from err
            raise
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float):
                self.writer.add_scalar(key, value, record["step"])

    def crops(self, step: int, strips: dict[str, np.ndarray]) -> None:
        """Validation crops: into TensorBoard and the run's page."""
        from upres.training.run_report import save_crop, write_run_report

        for name, strip in strips.items():
            save_crop(self.run_dir, step, name, strip)
            self.writer.add_image(f"val/{name}", strip, step, dataformats="HWC")
        write_run_report(self.run_dir)

    def finish(self, state: TrainState) -> None:
        """The time per phase, and the page with everything."""
        from upres.training.run_report import write_run_report

        self.record({"step": state.step, "phase_seconds": {k: round(v, 2) for k, v in
                                                          self.clock.seconds.items()}})
        write_run_report(self.run_dir)

    def tick(self) -> None:
        self.step += 1
        self.bar.update(1)

    def training(self, state: TrainState, loss: torch.Tensor) -> None:
        """Loss, learning rate and steps per second since the last record."""
        now = time.perf_counter()
        rate = (state.step - self.tick_step) / max(now - self.tick_time, 1e-9)
        self.tick_time, self.tick_step = now, state.step
        lr_now = state.scheduler.get_last_lr()[0]
        self.bar.set_postfix(loss=f"{loss.item():.4g}", lr=f"{lr_now:.2e}")
        self.record({"step": state.step, "loss": loss.item(), "lr": lr_now, "it_per_s": rate})
        self.warn_if_long(state, rate)

    def warn_if_long(self, state: TrainState, rate: float) -> None:
        """Once, when the steps left would take more than a day at this speed (a GPU recipe on a
        CPU), say so with the figures."""
        hours = (self.iterations - state.step) / max(rate, 1e-9) / 3600
        if self.warned or hours < 24 or state.deadline is not None or not self.shard.main:
            return
        self.warned = True
        left = self.iterations - state.step
        self.message(f"warning: at {rate:.3g} it/s on {state.device}, the {left} steps left take "
                     f"~{hours:,.0f} hours; this config is sized for a faster device (set "
                     "train.iterations or train.time_budget)")

    def message(self, text: str) -> None:
        self.bar.write(text)


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the end of the step and stops."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old = {}

    def __enter__(self) -> StopFlag:
        if sys.platform != "win32" and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
