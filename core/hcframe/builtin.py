"""The core's own components, registered through the ``hcframe`` entry point like any plugin."""

from hcframe.heads import LinearHead, OnlineLinearProbe, SupervisedClassification
from hcframe.registry import Registry, hookimpl
from hcframe.transforms import Normalize


@hookimpl
def hcframe_register(registry: Registry) -> None:
    registry.add("head", "linear", LinearHead)
    registry.add("task", "supervised", SupervisedClassification)
    registry.add("task", "online_probe", OnlineLinearProbe)
    registry.add("transform", "normalize", Normalize)
