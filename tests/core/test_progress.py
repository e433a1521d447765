"""Progress with the time left: plain lines when not on a terminal, the training log line, and
the long loops that report through it (feature extraction)."""

from __future__ import annotations

import re

import pytest

from hcframe.progress import ProgressBar, ProgressClock, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_every_interval_with_rate_and_time_left():
    clock, lines = FakeClock(), []
    with ProgressBar("checking videos", 10, terminal=False, log=lines.append, every_s=30, unit="videos", clock=clock) as bar:
        for _ in range(10):
            clock.now += 10  # 10 s per video
            bar.advance()
    # Lines at 30 s (3 done: 7 left at 0.1/s = 70 s), 60 s and 90 s, then the total.
    assert lines == [
        "checking videos: 3/10 (30 %), 0.1 videos/s, ETA 1:10",
        "checking videos: 6/10 (60 %), 0.1 videos/s, ETA 0:40",
        "checking videos: 9/10 (90 %), 0.1 videos/s, ETA 0:10",
        "checking videos: 10/10 in 1:40",
    ]


def test_a_short_loop_writes_nothing_and_disabled_progress_neither():
    clock, lines = FakeClock(), []
    with ProgressBar("quick", 5, terminal=False, log=lines.append, clock=clock) as bar:
        for _ in range(5):
            clock.now += 1
            bar.advance()
    with ProgressBar("off", 5, terminal=False, enabled=False, log=lines.append, every_s=0, clock=clock) as bar:
        bar.advance(5)
    assert lines == []


def test_the_clock_of_a_resumed_run_counts_only_its_own_steps():
    clock = FakeClock()
    eta = ProgressClock(100, done=40, clock=clock)
    assert eta.eta(40) == "?"  # no step yet: no rate
    clock.now += 30
    assert eta.eta_seconds(50) == pytest.approx(150.0)  # 10 steps in 30 s, 50 left
    assert eta.eta(50) == "2:30"
    assert [format_duration(s) for s in (0, 59.4, 61, 3600 + 125, None)] == ["0:00", "0:59", "1:01", "1:02:05", "?"]


def test_training_log_lines_show_step_of_total_and_time_left(testkit, toy_recipe, tmp_path):
    from hcframe.engine.trainer import Trainer

    lines = []
    Trainer(toy_recipe(train={"steps": 4, "batch_size": 8, "log_every": 2}), tmp_path / "run", log=lines.append).train()
    progress = [line for line in lines if line.startswith("step ")]
    assert len(progress) == 2
    assert re.fullmatch(r"step 2/4 epoch 0 lr \S+ loss=\S+ sup/ce=\S+ sup/acc=\S+ bright/mse=\S+ \S+ clips/s ETA \d+:\d\d", progress[0])
    assert progress[1].endswith("ETA 0:00")
