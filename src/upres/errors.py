"""Every error upres raises on purpose. The CLI prints an ``UpresError`` as one line and exits
with its ``exit_code``: 2 (nothing could be done: bad input, options, files) unless a class says
otherwise; per-file failures in a batch exit 1 once the other files are done. Anything else is a
bug and keeps its traceback."""

from __future__ import annotations

EXCERPT = 60  # characters of a value an error message quotes, at most


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


def excerpt(value, limit: int = EXCERPT) -> str:
    """A value as an error quotes it: its repr, cut to ``limit`` characters with its size said
    (a config value, a list of paths or a tensor can be megabytes)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if hasattr(value, "shape"):
        size = f"shape {tuple(value.shape)}"
    elif isinstance(value, str):
        size = f"{len(value):,} characters"
    elif isinstance(value, (list, tuple, dict, set)):
        size = f"{len(value):,} items"
    else:
        size = f"{len(text):,} characters written out"
    return f"{text[:limit]}... ({size})"


LISTED = 20  # problems an error lists, at most (the rest counted)


def listing(problems: list[str], limit: int = LISTED) -> str:
    """Problems one to a line (indented, after a newline), the first ``limit`` of them and how
    many more: a folder of 100,000 bad files gives a screenful, not 100,000 lines."""
    shown = [excerpt(p, 300)[1:-1] if len(p) > 300 else p for p in problems[:limit]]
    more = [f"... and {len(problems) - limit:,} more"] if len(problems) > limit else []
    return "\n  " + "\n  ".join(shown + more)


MAX_MESSAGE = 4000  # characters of an error the command line prints, at most


def bounded(message: str, limit: int = MAX_MESSAGE) -> str:
    """A message cut to ``limit`` characters, saying how much was left out."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... ({len(message) - limit:,} more characters left out)"


def os_problem(err: OSError) -> str:
    """An operating-system error in the user's terms: the file, then what happened, without
    Python's ``[Errno N]`` prefix."""
    what = (err.strerror or type(err).__name__).rstrip(".")
    what = what[0].lower() + what[1:] if what[:2] != what[:2].upper() else what
    files = [str(f) for f in (err.filename, err.filename2) if f is not None]
    return f"{' -> '.join(files)}: {what}" if files else what
