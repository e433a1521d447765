"""A run directory has one owner: while one ``hcframe run`` works in it, a second run or resume on it
is refused with one line (exit 2) and touches nothing; the lock goes away with the process that
held it, however it ends; under torchrun every rank of a refused run stops at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hcframe.rundir import LOCK_FILE, RunDirBusy, RunDirLock

SUPPORT = Path(__file__).resolve().parents[1] / "support"

#: A hook that parks a run after step 2 until a file appears (a run that is busy for as long as
#: the test needs), announcing with another file that it got there.
WAIT_PLUGIN = '''
import os, pathlib, time
import hcframe

class WaitForFile(hcframe.Hook):
    def __init__(self, started: str, release: str, step: int = 2) -> None:
        self.started, self.release, self.step = started, release, step

    def after_step(self) -> None:
        if self.trainer.step == self.step:
            pathlib.Path(self.started).write_text(str(os.getpid()))
            deadline = time.time() + 120
            while not os.path.exists(self.release) and time.time() < deadline:
                time.sleep(0.05)

@hcframe.hookimpl
def hcframe_register(registry):
    registry.add("hook", "wait_for_file", WaitForFile)
'''


def _env(*paths: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCFRAME_")}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (*paths, SUPPORT))
    env["OMP_NUM_THREADS"] = "1"
    env["HCFRAME_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the core and the test kit are all these runs need
    return env


def _hcframe(*args: str) -> list[str]:
    return [sys.executable, "-m", "hcframe", "--plugin", "hcframe_testkit", *args]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_second_run_on_a_busy_directory_is_refused_and_the_lock_dies_with_its_holder(toy_recipe_file, tmp_path):
    (tmp_path / "wait_plugin.py").write_text(WAIT_PLUGIN)
    started, release = tmp_path / "started", tmp_path / "release"
    recipe = toy_recipe_file(train={"steps": 3, "batch_size": 8, "checkpoint_every": 1, "log_every": 1})
    recipe.write_text(recipe.read_text() + f'\n[[hooks]]\nname = "wait_for_file"\nstarted = "{started}"\nrelease = "{release}"\n')
    run_dir = tmp_path / "run"
    env = _env(tmp_path)
    first = subprocess.Popen(
        _hcframe("--plugin", "wait_plugin", "run", str(recipe), "--output", str(run_dir), "--set", "optim.lr=0.01"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.time() + 240
        while not started.exists():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.time() < deadline, "the first run did not reach step 2"
            time.sleep(0.1)
        assert (run_dir / LOCK_FILE).read_text().startswith(f"pid {first.pid} on {socket.gethostname()} since ")
        before = _snapshot(run_dir)
        assert "checkpoints/step_00000001.pt" in before and "metrics.jsonl" in before

        # A scheduler's retry of the same job: resume on the busy directory.
        second = subprocess.run(
            _hcframe("--plugin", "wait_plugin", "run", str(recipe), "--output", str(run_dir), "--resume"),
            env=env, capture_output=True, text=True, timeout=240,
        )
        assert second.returncode == 2, second.stderr[-3000:]
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert errors == [
            f"error: {run_dir} is in use by another hcframe run ({(run_dir / LOCK_FILE).read_text().strip()}); "
            "wait for it to end, or pass another --output"
        ]
        assert "Traceback" not in second.stderr
        assert _snapshot(run_dir) == before  # it wrote nothing: no summary, no metrics, no overrides

        # The holder dies without cleaning up: the lock goes with it.
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        with RunDirLock(run_dir) as lock:
            assert lock.held
    finally:
        release.write_text("")
        if first.poll() is None:
            first.kill()
        first.communicate()


def test_the_lock_is_refused_within_one_process_and_free_after_release(tmp_path):
    holder = RunDirLock(tmp_path / "run")
    holder.acquire()
    with pytest.raises(RunDirBusy, match=rf"^{tmp_path / 'run'} is in use by another hcframe run \(pid {os.getpid()} on "):
        RunDirLock(tmp_path / "run").acquire()
    holder.release()
    with RunDirLock(tmp_path / "run") as again:
        assert again.held


@pytest.mark.slow
def test_every_torchrun_rank_of_a_refused_run_stops_at_once(toy_recipe_file, tmp_path):
    recipe = toy_recipe_file(train={"steps": 2, "batch_size": 8})
    run_dir = tmp_path / "run"
    with RunDirLock(run_dir):  # this test process is the other run
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             "-m", "hcframe", "--plugin", "hcframe_testkit", "run", str(recipe), "--output", str(run_dir), "--resume"],
            env=_env(), capture_output=True, text=True, timeout=240,
        )
        elapsed = time.perf_counter() - started
    assert proc.returncode != 0
    refused = [line for line in proc.stderr.splitlines() if line.startswith(f"error: {run_dir} is in use by another hcframe run")]
    assert len(refused) == 2, proc.stderr[-3000:]  # each rank says why it stopped
    assert elapsed < 120  # nobody waited for a collective that never came
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]
