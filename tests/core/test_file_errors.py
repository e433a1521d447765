"""A write the system refuses (full disk, file-size limit, read-only file system) is one line naming
the file and the cause, exit 1, no temporary file left, and the summary's own write never hides
the error that stopped the run."""

from __future__ import annotations

import builtins
import errno
import json
import os
import resource
from pathlib import Path

import pytest
from click.testing import CliRunner

import hcframe.loggers
import hcframe.files
import hcframe.run
from hcframe.cli import cli
from hcframe.files import FileWriteError, atomic_path, save_torch_atomic, write_text_atomic

pytestmark = pytest.mark.usefixtures("testkit")


def _leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize(
    "number, from_open, cause",
    [  # as the system raises them: open() names the file, write() does not
        (errno.EROFS, True, "read-only file system"),
        (errno.EACCES, True, "permission denied"),
        (errno.EDQUOT, False, "disk quota exceeded"),
        (errno.EFBIG, False, "file too large for the file system"),  # no `ulimit -f` in this process
    ],
)
def test_a_refused_write_names_the_file_and_the_cause_and_keeps_the_old_file(tmp_path, number, from_open, cause):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(FileWriteError) as info:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(number, os.strerror(number), *([str(tmp)] if from_open else []))
    assert str(info.value) == f"cannot write {target}: {cause}"
    assert info.value.errno == number
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]


def test_an_error_about_another_file_is_not_called_a_write_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "out.txt"):
            open(tmp_path / "missing-input.txt")  # reading the source failed, not writing the target
    assert os.listdir(tmp_path) == []


class _FillsUp:
    """A file on a disk that is full after ``room`` bytes (the error Linux gives: no file name)."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def _full_disk_for(monkeypatch, module, name_part: str, room: int = 1000) -> None:
    """Make ``module``'s ``open`` give files that fill up, for files whose name contains ``name_part``."""
    def fake_open(file, mode="r", *args, **kwargs):
        handle = builtins.open(file, mode, *args, **kwargs)
        return _FillsUp(handle, room) if ("w" in mode or "a" in mode) and name_part in Path(file).name else handle

    monkeypatch.setattr(module, "open", fake_open, raising=False)


def _run(recipe: Path, run_dir: Path):
    return CliRunner().invoke(cli, ["run", str(recipe), "--output", str(run_dir)])


def test_disk_full_while_checkpointing_is_one_line_and_the_summary_says_why(toy_recipe_file, tmp_path, monkeypatch):
    recipe = toy_recipe_file(train={"steps": 4, "batch_size": 8, "checkpoint_every": 2})
    _full_disk_for(monkeypatch, hcframe.files, ".step_")  # the checkpoint's temporary file
    result = _run(recipe, tmp_path / "run")
    assert result.exit_code == 1, result.output
    target = tmp_path / "run" / "checkpoints" / "step_00000002.pt"
    [line] = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert line.startswith(f"error: cannot write {target}: no space left on device (") and line.endswith(f"free in {target.parent})")
    assert "Traceback" not in result.output and "inline_container" not in result.output
    assert _leftovers(tmp_path / "run") == [] and not target.exists()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == f"FileWriteError: {line.removeprefix('error: ')}"


def test_the_summary_write_failing_too_does_not_hide_the_first_error(toy_recipe_file, tmp_path, monkeypatch):
    recipe = toy_recipe_file(train={"steps": 4, "batch_size": 8, "log_every": 1})
    _full_disk_for(monkeypatch, hcframe.loggers, "metrics.jsonl", room=300)  # a line or two fit

    def summary_fails(path, payload, **kwargs):
        raise FileWriteError(path, "no space left on device (0 bytes free)", errno.ENOSPC)

    monkeypatch.setattr(hcframe.run, "write_json_atomic", summary_fails)
    result = _run(recipe, tmp_path / "run")
    assert result.exit_code == 1, result.output
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert errors == [f"error: cannot write {tmp_path / 'run' / 'metrics.jsonl'}: no space left on device ({errors[0].split('(', 1)[1]}"]
    assert f"cannot write {tmp_path / 'run' / 'summary.json'}: no space left on device (0 bytes free) (after the run failed)" in result.stderr
    assert "Traceback" not in result.output and _leftovers(tmp_path / "run") == []


@pytest.fixture
def file_size_limit():
    """``ulimit -f``-style limit on this process's files (Python ignores SIGXFSZ, so a write past
    it fails with EFBIG, as in a job under a scheduler's limit); lifted afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def limit(size: int) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_file_size_limit_names_the_checkpoint_not_inline_container(toy_recipe_file, tmp_path, file_size_limit):
    # Checkpoints of this model are ~100 KB; every other file of the run is < 5 KB.
    recipe = toy_recipe_file(train={"steps": 2, "batch_size": 8, "checkpoint_every": 2})
    file_size_limit(40_000)
    result = _run(recipe, tmp_path / "run")
    file_size_limit(resource.RLIM_INFINITY)
    assert result.exit_code == 1, result.output
    target = tmp_path / "run" / "checkpoints" / "step_00000002.pt"
    [line] = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert line == f"error: cannot write {target}: file size limit reached (this process may write files of at most 39.1 KiB: `ulimit -f`)"
    assert "Traceback" not in result.output and "inline_container" not in result.output
    assert _leftovers(tmp_path / "run") == []
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


def test_torch_saves_and_text_writes_report_the_cause(tmp_path, monkeypatch):
    _full_disk_for(monkeypatch, hcframe.files, "weights", room=10)
    with pytest.raises(FileWriteError, match=rf"^cannot write {tmp_path / 'weights.pt'}: no space left on device \("):
        save_torch_atomic({"w": list(range(100))}, tmp_path / "weights.pt")
    write_text_atomic(tmp_path / "notes.txt", "fine")  # other files are not affected
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]
