"""Atomic file writes (a temp file in the destination folder, then ``os.replace``) and the one
cache folder."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from upres.errors import DiskFullError

# Writers that do their own I/O (torch.save, safetensors) report a full disk in their own words
# ("unexpected pos"); less than this much free space at the failure means the disk was full.
_NEARLY_FULL = 4 * 2**20


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/upres``, else ``~/.cache/upres``: converted pretrained weights, and the
    decoded training images under ``data/``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "upres"


def files_sha256(*paths: Path) -> str:
    """The SHA-256 of the files' bytes, one after another."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds,
    so readers never see a half-written file and a failure leaves the old file untouched.

    The temp file is created with mode 0666 so the kernel applies the user's umask; writers that
    replace the file (and so its mode) get that mode back before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    mode = os.fstat(fd).st_mode & 0o777
    os.close(fd)
    try:
        yield tmp
        if os.stat(tmp).st_mode & 0o777 != mode:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as err:
        full = out_of_space(err, path.parent)  # before the temp file's space is given back
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if full:
            raise DiskFullError(f"no space left on device while writing {path}") from err
        raise


def out_of_space(err: BaseException, folder: Path) -> bool:
    """Whether ``err`` (an OSError, or a library's own error) came from a full disk."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(err, (OSError, RuntimeError)):
        return False
    if "No space left" in str(err):
        return True
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL
    except OSError:
        return False


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
