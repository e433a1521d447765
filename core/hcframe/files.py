"""Writing files so that a reader never sees half of one, and errors that say which file and why.

- :func:`atomic_path`: write a temporary file beside the target, then rename it over the target
  (``os.replace`` is atomic within one file system). It serves every writer (``torch.save``,
  ``json.dump``, a zip file, a PyAV container that guesses its format from the file name);
  :func:`write_json_atomic`, :func:`write_text_atomic` and :func:`save_torch_atomic` are the
  common cases on top of it.
- :class:`FileWriteError`: what every writer here raises when the system refuses a write. Its
  message names the file and the cause in words (the disk is full, the file-size limit, a
  read-only file system), e.g. ``cannot write runs/x/checkpoints/step_00000400.pt: no space left
  on device (0 bytes free in runs/x/checkpoints)``. No temporary file is left behind.
- :func:`record_digest` / :func:`check_digest`: the size and SHA-256 of a file, recorded beside
  it when it is written (``<name>.digest.json``) and compared when it is read back, for caches
  whose files must be exactly what was written (the evaluation feature cache).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

__all__ = [
    "FileWriteError",
    "atomic_path",
    "check_digest",
    "file_digest",
    "record_digest",
    "save_torch_atomic",
    "writing",
    "write_json_atomic",
    "write_text_atomic",
]

# Errors that only a write can cause: they are reported as a failure to write the target even
# when the OSError does not name a file (``OSError: [Errno 28] No space left on device``).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class FileWriteError(OSError):
    """A file could not be written. ``str()`` is one line naming the file and the cause;
    ``errno`` is the system's error number, ``filename`` the file."""

    def __init__(self, path: str | Path, cause: str, error_number: int | None = None) -> None:
        super().__init__(error_number, cause, str(path))
        self.cause = cause

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.cause}"

    def __reduce__(self) -> Any:  # keeps the message across processes (DataLoader workers)
        return (type(self), (self.filename, self.cause, self.errno))


def _size_text(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _cause(exc: OSError, folder: Path) -> str:
    """The reason for ``exc`` in words, with what the system says about ``folder``."""
    if exc.errno == errno.ENOSPC:
        try:
            stat = os.statvfs(folder)
            return f"no space left on device ({_size_text(stat.f_bavail * stat.f_frsize)} free in {folder})"
        except (OSError, AttributeError):
            return "no space left on device"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded"
    if exc.errno == errno.EFBIG:
        try:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
            if soft != resource.RLIM_INFINITY:
                return f"file size limit reached (this process may write files of at most {_size_text(soft)}: `ulimit -f`)"
        except (ImportError, OSError, ValueError):
            pass
        return "file too large for the file system"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or str(exc)


def _names_the_target(exc: OSError, paths: tuple[Path, ...]) -> bool:
    if exc.errno in _WRITE_ERRNOS:
        return True
    return exc.filename is not None and Path(os.fsdecode(exc.filename)) in paths


@contextmanager
def writing(path: str | Path, *also: str | Path) -> Iterator[None]:
    """Report an ``OSError`` of the block that is about writing ``path`` (a write-only errno, or
    an error naming ``path`` or one of ``also``: its temporary file, its folder) as a
    :class:`FileWriteError` naming ``path``. Other errors pass unchanged."""
    path = Path(path)
    try:
        yield
    except FileWriteError:
        raise
    except OSError as exc:
        if not _names_the_target(exc, (path, path.parent, *map(Path, also))):
            raise
        raise FileWriteError(path, _cause(exc, path.parent), exc.errno) from exc


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # the earlier error is the one to report
        pass


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; when the block ends without an
    exception the temporary file replaces ``path``, otherwise it is removed.

    The temporary name starts with a dot (listings that skip hidden files skip it), is unique per
    process and call (concurrent writers of the same target do not clash: the last rename wins)
    and keeps ``path``'s suffix (writers that pick a format by extension still work). The folder
    is created when missing. ``fsync=True`` flushes the file to disk before the rename, so a
    machine crash leaves the old file or the new one, never an empty one (checkpoints).

    A failed write (in the block, the flush or the rename) raises :class:`FileWriteError`
    naming ``path`` and the cause; ``path`` keeps its previous content.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    with writing(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield tmp
            if fsync:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            _remove_quietly(tmp)


def write_json_atomic(path: str | Path, payload: Any, *, sort_keys: bool = False) -> None:
    """``payload`` as indented JSON (with a final newline) at ``path``, atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=sort_keys) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """``text`` at ``path``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


class _RecordingWriter:
    """A binary file for ``torch.save`` that keeps the ``OSError`` of a failed write: torch
    reports it only as ``enforce fail at inline_container.cc``, without the cause."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def save_torch_atomic(obj: Any, path: str | Path, *, fsync: bool = False) -> None:
    """``torch.save(obj)`` at ``path`` through :func:`atomic_path`; a failed write is a
    :class:`FileWriteError` with its cause (disk full, file-size limit, ...)."""
    import torch

    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "wb") as raw:
        recorder = _RecordingWriter(raw)
        try:
            torch.save(obj, recorder)
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise


# --- digests --------------------------------------------------------------------------------------
def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".digest.json")


def file_digest(path: str | Path) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of the file at ``path``."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def record_digest(path: str | Path) -> None:
    """Write the size and SHA-256 of ``path`` to ``<path>.digest.json`` (call right after
    writing ``path``; a file without a record is not trusted by :func:`check_digest`)."""
    path = Path(path)
    write_json_atomic(_digest_path(path), {"file": path.name, **file_digest(path)})


def check_digest(path: str | Path, *, hash: bool = True) -> str | None:
    """``None`` when ``path`` has the size and SHA-256 recorded when it was written, else why
    not, in words (no record, another size, another hash). ``hash = False``: the record and the
    size only, without reading the file (a cheap "is it there, whole" before a full check)."""
    path = Path(path)
    try:
        recorded = json.loads(_digest_path(path).read_text())
        size, sha256 = int(recorded["size"]), str(recorded["sha256"])
    except FileNotFoundError:
        return "no size and hash were recorded when it was written"
    except (OSError, ValueError, TypeError, KeyError) as exc:
        return f"its record {_digest_path(path).name} is unreadable ({type(exc).__name__})"
    actual = path.stat().st_size
    if actual != size:
        return f"it has {actual} bytes, {size} when it was written"
    if hash and file_digest(path)["sha256"] != sha256:
        return "its SHA-256 differs from the one recorded when it was written"
    return None
