"""hcframe-speed-example: a playback-speed pretext task, a compact C3D-style encoder and a training
hook that stops a run once a metric is good enough.

An example of a third-party hcframe plugin; see CONTRIBUTING.md in the hcframe repository.
"""

from hcframe_speed.c3d import C3DSmall
from hcframe_speed.hooks import StopWhenLearned
from hcframe_speed.task import PlaybackSpeedPrediction, resample_at_speeds

__version__ = "0.1.0"

__all__ = ["C3DSmall", "PlaybackSpeedPrediction", "StopWhenLearned", "__version__", "resample_at_speeds"]
