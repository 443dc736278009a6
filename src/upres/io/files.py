"""Writing without losing anything: atomic files (a temp file in the destination folder, then a
rename), the one overwrite rule (an existing output is replaced only when asked, and that
promise is kept at the rename, so concurrent writers never silently replace each other's files),
folders of results published whole (filled under a staging name, then renamed), tolerant JSONL
reading, and the one cache folder."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from upres.errors import DiskFullError, UpresError

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


class OutputExistsError(UpresError):
    """An output would replace a file or folder that upres did not make in this run."""


def _publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move a finished temp file to ``path``: replacing what is there only with ``overwrite``;
    otherwise by a hard link, which fails if ``path`` appeared meanwhile (another process)."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExistsError(f"{path} exists (another process may have written it); pass "
                                "--overwrite to replace it") from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        try:  # a file system without hard links: claim the name, then replace the claim
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            raise OutputExistsError(f"{path} exists; pass --overwrite to replace it") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only if the block succeeds,
    so readers never see a half-written file and a failure leaves the old file untouched.
    ``overwrite=False``: an existing ``path`` is an ``OutputExistsError``, checked at the rename.

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
        _publish(tmp, path, overwrite)
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


def atomic_write_bytes(path: str | Path, data: bytes, overwrite: bool = True) -> None:
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(data)


def check_output_file(path: str | Path, overwrite: bool, inputs: tuple = ()) -> None:
    """Refuse, before any work, an output that is a folder, one of the inputs, or (without
    ``overwrite``) an existing file."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder; give a file name")
    for source in inputs:
        if path.exists() and Path(source).exists() and os.path.samefile(path, source):
            raise OutputExistsError(f"{path} is an input; upres never writes over an input")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")


def check_output_folder(path: str | Path, overwrite: bool, what: str = "output folder") -> None:
    """Refuse, before any work, a file where a folder should be and (without ``overwrite``) a
    folder that holds files already."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path}: the {what} is a file")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(f"{path}: the {what} holds files already; pass --overwrite to "
                                "replace it, or choose another")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_staging(target: Path) -> list[Path]:
    """Staging folders ``.NAME.PID.xxxx`` of ``target`` left by a killed run (their process is
    gone); a running process's own staging is kept."""
    removed = []
    for folder in target.parent.glob(f".{target.name}.*"):
        pid = folder.name[len(target.name) + 2:].split(".")[0]
        if folder.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def umask() -> int:
    """The process's umask (read from /proc where it can be, so no thread sees it changed)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def begin_staging(target: Path) -> Path:
    """A new hidden staging folder beside ``target`` (stale ones of killed runs removed), with
    the mode the user's umask gives a new folder (``mkdtemp`` makes it 0700, and the published
    folder kept that: others in the user's group could not read a submission)."""
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", dir=target.parent))
    staging.chmod(0o777 & ~umask())
    return staging


def publish_folder(staging: Path, target: Path, overwrite: bool) -> None:
    """Rename a filled staging folder to ``target``: an empty ``target`` is taken over; one with
    files is replaced only with ``overwrite`` (moved aside, then deleted), so a kill at any point
    leaves the old folder or the new one."""
    try:
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        if target.exists() and overwrite:
            old = target.parent / f".{target.name}.{os.getpid()}.old-{secrets.token_hex(4)}"
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
            return
        if target.exists():
            raise OutputExistsError(f"{target}: the output folder appeared while upres worked "
                                    "(another process?); pass --overwrite to replace it")
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_folder(target: str | Path, overwrite: bool) -> Iterator[Path]:
    """Fill a staging folder in the block; it becomes ``target`` when the block succeeds (see
    ``publish_folder``) and is removed when it fails."""
    target = Path(target)
    check_output_folder(target, overwrite)
    staging = begin_staging(target)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_folder(staging, target, overwrite)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """The ``.NAME.xxxx.tmp`` files an interrupted atomic write left in a folder this process
    owns (a run folder being resumed)."""
    stale = [p for p in folder.glob(".*.tmp") if p.is_file()]
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return stale


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file; a torn last line (a kill mid-write) is dropped with a
    warning, a damaged line elsewhere is an error naming the line."""
    import json
    import warnings

    lines = Path(path).read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number < len(lines):
                raise UpresError(f"{path}: line {number} is not JSON ({line[:60]!r})") from None
            warnings.warn(f"{path}: the last line was cut off (an interrupted write); it is "
                          "dropped", stacklevel=2)
    return records
