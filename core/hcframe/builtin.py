"""The core's own components, registered through the ``hcframe`` entry point like any plugin."""

from hcframe.heads import LinearHead, OnlineLinearProbe, SupervisedClassification
from hcframe.loggers import CsvLogger, JsonlLogger, TensorBoardLogger, WandbLogger
from hcframe.registry import Registry, hookimpl
from hcframe.transforms import Normalize


@hookimpl
def hcframe_register(registry: Registry) -> None:
    registry.add("head", "linear", LinearHead)
    registry.add("task", "supervised", SupervisedClassification)
    registry.add("task", "online_probe", OnlineLinearProbe)
    registry.add("transform", "normalize", Normalize)
    registry.add("logger", "jsonl", JsonlLogger, summary="metrics.jsonl: a JSON object per logged step (always on)")
    registry.add("logger", "csv", CsvLogger, summary="metrics.csv: a row per logged step")
    registry.add("logger", "tensorboard", TensorBoardLogger, summary="TensorBoard: every logged number, part-map images (extra: tensorboard)")
    registry.add("logger", "wandb", WandbLogger, summary="Weights & Biases, offline by default: numbers, images (extra: wandb)")
