"""Writing files so that a reader never sees half of one: write a temporary file beside the target,
then rename it over the target (``os.replace`` is atomic within one file system).

One helper, :func:`atomic_path`, serves every writer (``torch.save``, ``json.dump``, a zip file, a
PyAV container that guesses its format from the file name); :func:`write_json_atomic` is the
common case on top of it.
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "write_json_atomic"]


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; when the block ends without an
    exception the temporary file replaces ``path``, otherwise it is removed.

    The temporary name starts with a dot (listings that skip hidden files skip it), is unique per
    process and call (concurrent writers of the same target do not clash: the last rename wins)
    and keeps ``path``'s suffix (writers that pick a format by extension still work). The folder
    is created when missing. ``fsync=True`` flushes the file to disk before the rename, so a
    machine crash leaves the old file or the new one, never an empty one (checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, payload: Any, *, sort_keys: bool = False) -> None:
    """``payload`` as indented JSON (with a final newline) at ``path``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=sort_keys) + "\n")
