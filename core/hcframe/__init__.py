"""hcframe: human-centred multi-task self-supervised pre-training of video encoders."""

from hcframe.components import (
    BatchTransform,
    Encoder,
    EncoderOutput,
    Head,
    Hook,
    LabelMaps,
    Logger,
    PretextTask,
    StateDictLayout,
    TaskInput,
    TaskOutput,
    Teacher,
)
from hcframe.data import BadVideo, TargetStore, VideoDataset
from hcframe.metrics import MetricInfo
from hcframe.registry import (
    ComponentRecord,
    get_registry,
    hookimpl,
    register_plugin,
)

__version__ = "0.1.0"

__all__ = [
    "BadVideo",
    "BatchTransform",
    "ComponentRecord",
    "Encoder",
    "EncoderOutput",
    "Head",
    "Hook",
    "LabelMaps",
    "Logger",
    "MetricInfo",
    "PretextTask",
    "StateDictLayout",
    "TargetStore",
    "TaskInput",
    "TaskOutput",
    "Teacher",
    "VideoDataset",
    "__version__",
    "get_registry",
    "hookimpl",
    "register_plugin",
]
