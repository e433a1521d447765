"""A run directory has one owner, and remembers how its run was started.

- ``run.lock``: :class:`RunDirLock`, an operating-system file lock that ``hcframe run`` holds on
  its run directory from before the first file is written until ``summary.json`` is written.
  A second run or resume on the same directory (a scheduler's retry while the first attempt
  still runs, a double-started job) is refused with one line (:class:`RunDirBusy`) before it
  touches anything. The lock is the kernel's (``flock`` on Linux and macOS): it goes away with the
  process however that ends (crash, ``kill -9``, a lost node), so a stale ``run.lock`` file never
  blocks anything and is left in place. Under torchrun rank 0 takes it, and every rank learns the
  outcome (:func:`hold_run_dir`). On file systems without locking support (some network
  mounts) the run goes on unprotected and says so. Windows uses ``msvcrt.locking`` (untested).
- ``overrides.json``: the ``--set`` options the run was started with (:func:`write_overrides`),
  which ``hcframe run RECIPE --resume`` applies again (:func:`read_overrides`,
  :func:`merge_overrides`), so a resume does not need them repeated.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path
from typing import Callable, Sequence

from hcframe.files import write_json_atomic, writing

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

__all__ = [
    "LOCK_FILE",
    "OVERRIDES_FILE",
    "RunDirBusy",
    "RunDirError",
    "RunDirLock",
    "hold_run_dir",
    "merge_overrides",
    "read_overrides",
    "write_overrides",
]

LOCK_FILE = "run.lock"
OVERRIDES_FILE = "overrides.json"
_WINDOWS_LOCK_OFFSET = 1 << 20  # a byte past the holder's note: Windows locks block reads too


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked (one-line message)."""


class RunDirBusy(RunDirError):
    """Another process holds the run directory's lock."""


def _try_lock(fd: int) -> bool:
    """Take the lock without waiting; False when another process holds it."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        # LOCK_UN releases the lock itself, also while forked DataLoader workers still hold
        # copies of this descriptor.
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


class RunDirLock:
    """The lock on ``run_dir`` (its ``run.lock`` file). :meth:`acquire` takes it or raises
    :class:`RunDirBusy` naming the holder; :meth:`release` (or the end of the process) frees it.
    The file holds a note of who holds it (pid, host, since when) for that message."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, log: Callable[[str], None] = lambda m: None) -> None:
        if self._fd is not None:
            return
        with writing(self.path):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _try_lock(fd)
        except OSError as exc:  # no lock support here (ENOLCK, EINVAL, ENOSYS on some mounts)
            os.close(fd)
            log(f"cannot lock {self.path} ({exc.strerror or exc}); a second run on {self.run_dir} would not be refused")
            return
        if not locked:
            os.close(fd)
            raise RunDirBusy(
                f"{self.run_dir} is in use by another hcframe run ({self.holder() or 'holder unknown'}); "
                f"wait for it to end, or pass another --output"
            )
        self._fd = fd
        note = f"pid {os.getpid()} on {socket.gethostname()} since {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}\n"
        try:  # the note is a courtesy: the lock does not depend on it
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, note.encode())
        except OSError:
            pass

    def holder(self) -> str:
        """The holder's note (``pid N on HOST since TIME``), or "" when it cannot be read."""
        try:
            return self.path.read_text(errors="replace").strip().splitlines()[0][:200]
        except (OSError, IndexError):
            return ""

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            _unlock(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> "RunDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def hold_run_dir(run_dir: str | Path, log: Callable[[str], None] = lambda m: None) -> RunDirLock | None:
    """Lock ``run_dir`` for this run: the main process takes the lock (returned; release it at
    the end), the others get None. When it is busy, every process raises the same
    :class:`RunDirBusy`, so under torchrun no rank is left waiting for the others. Call it after
    the process group is initialised (:func:`hcframe.engine.distributed.init_from_environment`)."""
    from hcframe.engine import distributed as hd

    lock: RunDirLock | None = None
    refusal: tuple[str, str] | None = None  # (kind, message)
    if hd.is_main_process():
        lock = RunDirLock(run_dir)
        try:
            lock.acquire(log)
        except RunDirBusy as exc:
            refusal, lock = ("busy", str(exc)), None
        except Exception as exc:  # e.g. the folder cannot be created: tell the other ranks too
            refusal, lock = ("error", str(exc)), None
            if not hd.is_distributed():
                raise
    refusal = hd.broadcast_from_main(refusal)
    if refusal is not None:
        raise (RunDirBusy if refusal[0] == "busy" else RunDirError)(refusal[1])
    return lock


# --- the run's --set options ------------------------------------------------------------------------
def read_overrides(run_dir: str | Path) -> list[str]:
    """The ``--set`` options stored in ``run_dir`` (empty when there are none);
    :class:`RunDirError` when the file cannot be read."""
    path = Path(run_dir) / OVERRIDES_FILE
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path}: cannot read the run's --set options ({exc}); delete it and pass them again") from None
    overrides = stored.get("overrides") if isinstance(stored, dict) else None
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise RunDirError(f"{path}: expected {{\"overrides\": [\"KEY.PATH=VALUE\", ...]}}; delete it and pass the run's --set options again")
    return overrides


def write_overrides(run_dir: str | Path, recipe_path: str, overrides: Sequence[str]) -> None:
    """Store the recipe file and ``--set`` options of a run in ``run_dir/overrides.json``."""
    write_json_atomic(Path(run_dir) / OVERRIDES_FILE, {"recipe": str(recipe_path), "overrides": list(overrides)})


def _key(assignment: str) -> str:
    return assignment.partition("=")[0].strip()


def merge_overrides(stored: Sequence[str], given: Sequence[str]) -> list[str]:
    """The stored options, then the given ones; a given option replaces a stored one of the same
    key (they are applied in order, so the later one wins either way)."""
    replaced = {_key(g) for g in given}
    return [s for s in stored if _key(s) not in replaced] + list(given)
