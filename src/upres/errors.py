"""Every error upres raises on purpose. The CLI prints an ``UpresError`` as one line and exits
with its ``exit_code``: 2 (nothing could be done: bad input, options, files) unless a class says
otherwise; per-file failures in a batch exit 1 once the other files are done. Anything else is a
bug and keeps its traceback."""

from __future__ import annotations


class UpresError(Exception):
    """A problem with the user's input, files or options; the message names what and where."""

    exit_code = 2


class DiskFullError(UpresError):
    """A write ran out of space; the message names the file. Nothing half-written is left."""


class ConfigError(UpresError):
    """A configuration or plan cannot be used; the message names the file and key paths."""


class ArchitectureError(UpresError):
    """An architecture name or its hyperparameters are not valid."""


class WeightsError(UpresError):
    """A weights file cannot be used; the message names the file and the problem."""


class ImageError(UpresError):
    """An image cannot be read or written; the message names the file and the problem."""


class InferenceError(UpresError):
    """Inference options or the device cannot be used as asked."""


class DataError(UpresError):
    """Training data cannot be used; the message lists every problem with file names."""


class CheckpointError(UpresError):
    """A training checkpoint cannot be read; the message names the file."""


class TrainingError(UpresError):
    """Training stopped on purpose (non-finite loss); the message says where and why."""

    exit_code = 1


class TrainingInterrupted(UpresError):
    """SIGINT/SIGTERM: a checkpoint was written and the run can be resumed (exit 130, as a
    shell reports Ctrl-C)."""

    exit_code = 130


class EvalError(UpresError):
    """Folders cannot be compared; the message names the files."""


class PredictError(UpresError):
    """Prediction cannot run as asked; the message says why."""
