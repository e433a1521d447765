"""hcframe-speed-example: a playback-speed pretext task and a compact C3D-style encoder.

An example of a third-party hcframe plugin; see CONTRIBUTING.md in the hcframe repository.
"""

from hcframe_speed.c3d import C3DSmall
from hcframe_speed.task import PlaybackSpeedPrediction, resample_at_speeds

__version__ = "0.1.0"

__all__ = ["C3DSmall", "PlaybackSpeedPrediction", "__version__", "resample_at_speeds"]
