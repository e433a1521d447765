"""Entry point of ``hcframe-speed-example`` (declared in its pyproject.toml): registers its components.

Keep this module cheap to import: it runs for every ``hcframe`` command, including ``--help``.
"""

import hcframe
from hcframe.registry import Registry

from hcframe_speed.c3d import C3DSmall
from hcframe_speed.hooks import StopWhenLearned
from hcframe_speed.task import PlaybackSpeedPrediction


@hcframe.hookimpl
def hcframe_register(registry: Registry) -> None:
    registry.add("task", "playback_speed", PlaybackSpeedPrediction)
    registry.add("encoder", "c3d_small", C3DSmall)
    registry.add("hook", "stop_when_learned", StopWhenLearned)


@hcframe.hookimpl
def hcframe_add_commands(cli) -> None:
    # Imported here, not at the top: registering components must not pay for the command's imports.
    from hcframe_speed.commands import c3d_stages_command

    cli.add_command(c3d_stages_command)
