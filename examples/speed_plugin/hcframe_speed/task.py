"""Playback-speed prediction: which of S speeds was a clip resampled at?

A clip played back faster skips frames, so motion per frame grows with the speed; telling the
speeds apart needs a representation of how fast things move, not only of what is in the frame
(the idea behind "pace prediction", Wang et al. ECCV 2020, and SpeedNet, Benaim et al. CVPR 2020).

The task resamples the view it receives itself: for each clip it draws a speed ``s`` from
``speeds``, keeps ``frames`` frames ``start, start + s, ..., start + s * (frames - 1)`` from a random
start, encodes the result with the task's encoder (shared trunk + the task's branch) and classifies
``s`` with a linear head. The features the engine computed on the full-rate view are not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import hcframe

__all__ = ["PlaybackSpeedPrediction", "resample_at_speeds"]


def resample_at_speeds(
    clips: Tensor,
    speeds: Tensor,
    frames: int,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Temporally subsample each clip at its own speed.

    ``clips``: ``[B, C, T, H, W]``; ``speeds``: integer ``[B]`` (frame step per clip). Returns
    ``[B, C, frames, H, W]`` where clip ``b`` holds frames ``start_b + speeds[b] * k`` for
    ``k < frames``; ``start_b`` is uniform in ``[0, T - speeds[b] * frames]`` (or 0 without
    ``random_start``), so that the sampled frames span ``speeds[b] * frames`` source frames.
    """
    batch, channels, length, height, width = clips.shape
    span = speeds * frames
    if int(span.max()) > length:
        raise ValueError(f"clips have {length} frames, fewer than frames x speed = {int(span.max())}")
    if random_start:
        room = (length - span + 1).to(torch.float64)
        u = torch.rand(batch, generator=generator, dtype=torch.float64, device=generator.device if generator is not None else clips.device)
        start = (u.to(clips.device) * room).floor().long().clamp_max(length - span)
    else:
        start = torch.zeros_like(speeds)
    index = start[:, None] + speeds[:, None] * torch.arange(frames, device=clips.device)[None, :]
    index = index.view(batch, 1, frames, 1, 1).expand(batch, channels, frames, height, width)
    return clips.gather(2, index)


class PlaybackSpeedPrediction(hcframe.PretextTask):
    """Classify the playback speed a clip was resampled at (label-free; needs only raw clips).

    Arguments (all optional):

    - ``speeds`` (list of distinct integers >= 1, default ``[1, 2, 4]``): the frame steps; the
      classes, in this order.
    - ``frames`` (int >= 1, default 4): frames kept per resampled clip, ``T'``.
    - ``random_start`` (bool, default true): start each resampled clip at a random frame, so the
      start position says nothing about the speed.
    - ``dropout`` (float in [0, 1), default 0): dropout before the linear head.

    The dataset's clips must have at least ``frames * max(speeds)`` frames (``data.clips.clip_len`` of the video datasets);
    with the defaults that is 16. Shorter clips stop the run with a message saying so.
    """

    num_views = 1

    def __init__(
        self,
        speeds: list[int] = (1, 2, 4),  # type: ignore[assignment]  # a tuple: immutable default
        frames: int = 4,
        random_start: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        speeds = list(speeds)
        if not speeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in speeds):
            raise ValueError(f"playback_speed: speeds must be a non-empty list of integers >= 1, got {speeds!r}")
        if len(set(speeds)) != len(speeds):
            raise ValueError(f"playback_speed: speeds must be distinct (they are the classes), got {speeds!r}")
        if len(speeds) < 2:
            raise ValueError(f"playback_speed: give at least two speeds to tell apart, got {speeds!r}")
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"playback_speed: frames must be an integer >= 1, got {frames!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"playback_speed: dropout must be in [0, 1), got {dropout!r}")
        self.speeds = speeds
        self.frames = frames
        self.random_start = random_start
        self.dropout = dropout
        self.register_buffer("speed_values", torch.tensor(speeds, dtype=torch.long), persistent=False)
        self.head: nn.Module | None = None

    @property
    def min_clip_len(self) -> int:
        """The shortest clip this task can resample at every speed."""
        return self.frames * max(self.speeds)

    def metric_info(self) -> tuple[hcframe.MetricInfo, ...]:
        # ``chance`` is drawn beside the accuracy it is the baseline of.
        return (
            hcframe.MetricInfo("ce", "loss", progress=True),
            hcframe.MetricInfo("acc", "accuracy", progress=True),
            hcframe.MetricInfo("chance", "fraction", plot="accuracy"),
        )

    def setup(self, encoder: nn.Module, feature_dim: int) -> None:
        # The encoder is not stored: it belongs to the model; forward() gets it in TaskInput.
        self.head = nn.Sequential(nn.Dropout(self.dropout), nn.Linear(feature_dim, len(self.speeds)))

    def forward(self, inp: hcframe.TaskInput) -> hcframe.TaskOutput:
        assert self.head is not None, "setup() was not called"
        view = inp.batch["views"][0]
        length = view.shape[2]
        if length < self.min_clip_len:
            raise ValueError(
                f"playback_speed: clips have {length} frames but frames={self.frames} at speeds up to "
                f"{max(self.speeds)} need {self.min_clip_len}; raise data.clips.clip_len or lower frames / speeds"
            )
        labels = torch.randint(len(self.speeds), (view.shape[0],), device=view.device)
        clips = resample_at_speeds(view, self.speed_values[labels], self.frames, self.random_start)
        logits = self.head(inp.encoder(clips).pooled)
        # log-softmax in float32 whatever autocast made of the logits (bf16 keeps 8 significant bits)
        loss = F.cross_entropy(logits.float(), labels)
        with torch.no_grad():
            acc = (logits.argmax(1) == labels).float().mean()
        return hcframe.TaskOutput({"ce": loss}, {"acc": acc, "chance": 1.0 / len(self.speeds)})
