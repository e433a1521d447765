"""Registers the video data components with hcframe (entry point ``hcframe: video``)."""

from hcframe.registry import Registry, hookimpl


@hookimpl
def hcframe_register(registry: Registry) -> None:
    """Datasets and transforms are added here as their modules land."""
