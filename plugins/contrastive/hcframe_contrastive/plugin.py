"""Registers the contrastive components with hcframe (entry point ``hcframe: contrastive``)."""

from hcframe.registry import Registry, hookimpl

from hcframe_contrastive.heads import ProjectionMLP
from hcframe_contrastive.tasks import MoCoTask, SimCLRTask


@hookimpl
def hcframe_register(registry: Registry) -> None:
    registry.add("head", "projection_mlp", ProjectionMLP)
    registry.add("task", "simclr", SimCLRTask)
    registry.add("task", "moco", MoCoTask)
