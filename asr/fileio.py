"""Atomic file writes: write to a temporary name beside the target, then rename; and the check
that an output location can be written, made before any expensive work.

A reader never sees a half-written manifest, checkpoint or report, and an interrupted run leaves
the previous version in place. A write that fails (disk full, no permission, a file where a
folder should be) raises `DataError` naming the file the caller asked for with the system's
reason, e.g. `exp/checkpoints/last.pt: cannot write: No space left on device`; the temporary
file is removed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from asr.errors import DataError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside `path`; on a clean exit rename it onto `path`.

    On an exception the temporary file is removed and `path` is left untouched. An `OSError` of
    the write itself (creating the folder or the file, writing, syncing, renaming) becomes a
    `DataError` naming `path`; other exceptions from the caller's block pass through unchanged.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _write_error(path, err, None) from None
    try:
        os.close(fd)
        # mkstemp creates the file 0600; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        if "b" in mode:
            f = open(tmp, mode)
        else:
            f = open(tmp, mode, encoding=encoding)
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        # A write to the file object has no file name; one naming another file is the caller's.
        if isinstance(err, OSError) and err.filename in (None, tmp, str(path)):
            raise _write_error(path, err, tmp) from None
        raise


def _write_error(path: Path, err: OSError, tmp: str | None) -> DataError:
    """`PATH: cannot write: reason`, naming the file the caller asked for, never the temporary one."""
    reason = err.strerror or str(err) or type(err).__name__
    if isinstance(err, FileExistsError) and err.filename not in (None, tmp, str(path)):
        reason = f"{err.filename} is a file, not a folder"  # from mkdir of a folder above `path`
    elif err.filename not in (None, tmp, str(path)):
        reason = f"{err.filename}: {reason}"
    kept = "; the previous version is unchanged" if os.path.isfile(path) else ""
    return DataError(f"{path}: cannot write: {reason}{kept}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """`torch.save` to `path` atomically; a failed write (e.g. disk full) is a DataError naming `path`."""
    import torch

    with atomic_open(path, "wb", encoding=None) as f:
        try:
            torch.save(obj, f)
        except RuntimeError as err:
            # torch's zip writer reports a failed write as its own "unexpected pos" error, raised
            # while handling the OSError that says why (No space left on device): report that one.
            if isinstance(err.__context__, OSError):
                raise err.__context__ from None
            raise


def check_output(path: str | os.PathLike, folder: bool = True) -> Path:
    """Check, before any work, that `path` (a folder, or a file when `folder` is False) can be
    written; nothing is created. Returns `path`.

    Raises DataError `PATH: reason` when `path` (or the folder above it) is a file where a folder
    is needed, a folder where a file is needed, or lies where this user cannot write (permission,
    read-only file system). A missing folder is fine when the nearest existing one is writable.
    """
    path = Path(path)
    if os.path.exists(path):
        if folder and not os.path.isdir(path):
            raise DataError(f"{path}: not a folder (a file of that name exists)")
        if not folder and os.path.isdir(path):
            raise DataError(f"{path}: is a folder, not a file")
    existing = path if folder else path.parent
    while not os.path.exists(existing) and existing != existing.parent:
        existing = existing.parent
    if not os.path.isdir(existing):
        raise DataError(f"{path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        why = "read-only file system" if read_only else "permission denied"
        raise DataError(f"{path}: cannot write in {existing} ({why})")
    return path


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of `path`, newlines read as `open()` does (\\r\\n and \\r become \\n); a
    DataError naming the file (as `what`) when it is missing or unreadable, and `file:line` when
    a byte is not UTF-8."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read {what}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(f"{path}:{line}: {what} is not UTF-8 text (byte 0x{data[err.start]:02x} at byte "
                        f"{column} of the line); re-encode it as UTF-8") from None
