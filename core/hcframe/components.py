"""The abstract components hcframe composes into a run.

Eight kinds of things are registered and created by name (see :mod:`hcframe.registry`):

========== ============================================ =================================
kind       base class                                   what it is
========== ============================================ =================================
dataset    :class:`hcframe.data.VideoDataset`           map-style clips (+ labels, targets)
transform  :class:`BatchTransform`                      per-batch augmentation on the device
encoder    :class:`Encoder`                             a video trunk made of ordered stages
head       :class:`Head`                                maps encoder outputs to predictions
task       :class:`PretextTask`                         batch + features -> named losses
teacher    :class:`Teacher`                             frozen frames -> per-pixel part logits
hook       :class:`Hook`                                code run around the training steps
logger     :class:`Logger`                              where logged numbers and images go
========== ============================================ =================================

They are deliberately small. Research code subclasses them; nothing here reads a recipe.
"""

from __future__ import annotations

import abc
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Mapping, NamedTuple, Sequence

import attrs
import torch
from torch import Tensor, nn

from hcframe.data import ClipShape, TargetStore
from hcframe.metrics import MetricInfo

__all__ = [
    "BatchTransform",
    "Encoder",
    "EncoderOutput",
    "Head",
    "Hook",
    "LabelMaps",
    "Logger",
    "PretextTask",
    "StateDictLayout",
    "TaskInput",
    "TaskOutput",
    "Teacher",
]


class EncoderOutput(NamedTuple):
    """What an encoder (or one task's branch of it) returns for a batch of clips.

    ``feature_map`` is ``[B, D, t, h, w]``; ``pooled`` is ``[B, D]``. A named tuple, so tracers
    (fvcore's flop counter, torch.jit) accept encoders as they are.
    """

    feature_map: Tensor
    pooled: Tensor


class Encoder(nn.Module, abc.ABC):
    """A video trunk ``[B, 3, T, H, W] -> EncoderOutput``, built as an ordered sequence of stages.

    Subclasses fill ``self.stages`` (an :class:`~torch.nn.ModuleDict` whose insertion order is the
    order of computation: stem first, last stage last) and set ``self.feature_dim`` to the channel
    count of the last stage. The stage structure is what task-dependent branching splits: the
    stages from the split point on are copied once per task (see :mod:`hcframe.engine.model`).
    Stages must therefore be plain feed-forward blocks, each taking the previous stage's output.
    """

    stages: nn.ModuleDict
    feature_dim: int

    def stage_names(self) -> list[str]:
        return list(self.stages.keys())

    def run_stages(self, x: Tensor, start: str | None = None, stop: str | None = None) -> Tensor:
        """Apply the stages from ``start`` (inclusive) up to ``stop`` (exclusive)."""
        names = self.stage_names()
        lo = names.index(start) if start is not None else 0
        hi = names.index(stop) if stop is not None else len(names)
        for name in names[lo:hi]:
            x = self.stages[name](x)
        return x

    def pool(self, feature_map: Tensor) -> Tensor:
        """Global spatio-temporal average; override for other pooling."""
        return feature_map.mean(dim=(2, 3, 4))

    def forward(self, clips: Tensor) -> EncoderOutput:
        fmap = self.run_stages(clips)
        return EncoderOutput(fmap, self.pool(fmap))

    def state_dict_layouts(self) -> Sequence["StateDictLayout"]:
        """The other libraries' key layouts this encoder (as configured) can read and write.

        hcframe reads its own checkpoints and encoder exports itself; a file in any other layout is
        offered to these (``[model] init``, ``hcframe eval --checkpoint``, ``hcframe
        export-encoder --format``). None by default.
        """
        return ()


class StateDictLayout(abc.ABC):
    """How another library names an encoder's weights, one key at a time.

    The encoder's own keys are those of its stages, ``stages.<stage>.<…>``. Mapping key by key (not
    whole dicts) is what keeps loading strict and its errors precise: every key of a file must map
    to a weight of the encoder or be one the layout :meth:`drops`, every weight must be in the file,
    and shapes must agree; a problem is reported with the key as the file spells it.
    """

    #: Short name, used in messages and by ``hcframe export-encoder --format``.
    name: ClassVar[str]

    @abc.abstractmethod
    def to_encoder_key(self, key: str) -> str | None:
        """The encoder's key for the file's ``key``, or ``None`` when the layout has no counterpart
        for it (the key is then refused as unexpected, unless :meth:`drops` accepts it)."""

    @abc.abstractmethod
    def from_encoder_key(self, key: str) -> str:
        """The file's key for the encoder's ``key`` (for exports and for naming missing keys)."""

    def drops(self, key: str) -> bool:
        """Keys of the other library's model that the encoder deliberately has no counterpart for
        (its classifier): accepted in a file and not loaded, never written by an export."""
        return False

    def recognizes(self, keys: Sequence[str]) -> bool:
        """Whether a file with these keys is in this layout (at least one key maps)."""
        return any(self.to_encoder_key(k) is not None for k in keys)


class Head(nn.Module, abc.ABC):
    """A small module on top of encoder features (projection MLP, classifier, parsing decoder).

    Heads take explicit dimensions in their constructor and are owned by a task or an evaluation
    protocol; the encoder never knows about them.
    """

    @abc.abstractmethod
    def forward(self, features: Tensor) -> Tensor: ...


@attrs.define
class TaskInput:
    """Everything a pretext task sees at one training step.

    ``batch``: the device batch after the transform (``views`` is a list of float clips
    ``[B, 3, T, H, W]``; see :mod:`hcframe.data` for the other keys).
    ``features``: one :class:`EncoderOutput` per view the task asked for, computed by the shared
    trunk followed by this task's own branch (or the shared stages when there is no split).
    ``encoder``: the module that maps clips to this task's features (trunk + branch). Use it to make
    momentum copies; do not register it as a submodule (it is already owned by the model).
    ``step`` / ``max_steps``: optimiser steps done so far and planned, for schedules.
    """

    batch: Mapping[str, Any]
    features: list[EncoderOutput]
    encoder: nn.Module
    step: int
    max_steps: int


@attrs.define
class TaskOutput:
    """Named loss terms (summed into the task's loss) and detached metrics to log."""

    losses: dict[str, Tensor]
    metrics: dict[str, Tensor | float] = attrs.field(factory=dict)

    @property
    def total(self) -> Tensor:
        return torch.stack(list(self.losses.values())).sum()


class PretextTask(nn.Module, abc.ABC):
    """One self-supervised objective.

    A task declares what it needs (``num_views`` clips of the same video, and batch keys in
    ``needs`` such as ``"parts"`` or ``"label"``), builds its heads in :meth:`setup` once the
    encoder's feature dimension is known, and turns a :class:`TaskInput` into a
    :class:`TaskOutput`. :meth:`metric_info` declares what the output's losses and metrics are
    (how reports plot and show them). Buffers and submodules of the task (queues, momentum
    encoders) are saved in checkpoints with the model. Parameters with ``requires_grad=False``
    are not optimised.
    """

    num_views: ClassVar[int] = 1
    needs: ClassVar[frozenset[str]] = frozenset()
    #: ``None``: the task owns a branch. A task name or ``"concat"``: the task owns no branch and
    #: reads that representation, detached (an online probe that must not shape the encoder).
    reads_branch: str | None = None
    #: The fewest videos in a batch (``train.batch_size``, over all processes) this task's loss
    #: means anything with; a smaller batch refuses the recipe before any work. A contrastive loss
    #: needs another video as a negative: 2.
    min_batch_size: ClassVar[int] = 1

    def setup(self, encoder: nn.Module, feature_dim: int) -> None:
        """Called once, before the optimiser is built. ``encoder`` is as in :class:`TaskInput`."""

    def target_store(self, dataset: Any) -> Any | None:
        """For tasks that need per-frame targets: where the dataset should read them from.

        Return a :class:`hcframe.data.TargetStore` to have data workers load targets with the clips,
        or ``None`` when the task computes its targets itself on the device.
        """
        return None

    def check_dataset(self, dataset: Any) -> None:
        """Called once the training dataset is built and every task has set its target store:
        raise ``ValueError`` (one line, what to change) to refuse a dataset this task cannot train
        on, before any work. Default: accept."""

    def metric_info(self) -> Sequence[MetricInfo]:
        """What this task's :class:`TaskOutput` terms are: one :class:`~hcframe.metrics.MetricInfo`
        per loss or metric name (kind, shown on the progress line, plot). The trainer logs them
        as ``<task name>/<term>`` and records the declarations in the run directory, where
        ``hcframe report`` reads them. Undeclared terms are still logged: loss terms as losses,
        metrics in a plot of other numbers."""
        return ()

    def visualise(self, inp: TaskInput, max_clips: int = 4) -> "LabelMaps | None":
        """Per-pixel class maps of a few clips of the batch, to be drawn over their frames (the
        images of the ``tensorboard`` and ``wandb`` loggers, ``hcframe show``); ``None`` (the
        default) when the task has nothing to draw. Called without gradients, with the model in
        eval mode, on the batch of a training step; ``inp.features`` are this task's, as in
        :meth:`forward`. Must not change the task's state or draw random numbers."""
        return None

    @abc.abstractmethod
    def forward(self, inp: TaskInput) -> TaskOutput: ...


class BatchTransform(nn.Module, abc.ABC):
    """Per-batch augmentation and normalisation, run on the training device.

    Receives the collated batch on the device (``views``: uint8 ``[B, V, 3, T, H, W]``; optional
    ``parts``: ``[B, V, K, T, h, w]``; ``views_hw`` / ``parts_hw`` ``[B, 2]`` when frames of
    different sizes were padded to one, see :func:`hcframe.data.collate`) and returns it with

    - ``views`` replaced by a list of ``V`` normalised float tensors ``[B, 3, T, H', W']``;
    - ``parts`` (when present) replaced by a list of ``V`` float tensors ``[B, K, T, h', w']`` that went
      through the same geometric transform (crop, flip) as their view; cells pushed outside the
      image sum to 0 (unknown);
    - ``pixel_mean`` / ``pixel_std``: float ``[3]`` tensors, so a teacher can undo the normalisation.

    ``train=False`` must be deterministic (no random augmentation): evaluation uses it.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @abc.abstractmethod
    def forward(self, batch: dict[str, Any], train: bool = True) -> dict[str, Any]: ...

    def output_shape(self, clip: ClipShape) -> ClipShape:
        """The shape of the views this transform makes of clips of shape ``clip`` (default: the
        same; a transform that crops or resizes says so)."""
        return clip

    def set_part_labels(self, label_names: Sequence[str]) -> None:
        """Called by the engine before training when batches carry ``parts`` with these class
        names. A transform that flips images must also swap mirrored classes (a left arm seen in
        a mirror is a right arm); the default does nothing because it does not flip."""

    def set_flip_allowed(self, allowed: bool) -> None:
        """Called by the engine before training and fine-tuning with the dataset's
        ``flip_preserves_label``. A transform that flips images must not flip when ``allowed`` is
        False (wave-left mirrored is wave-right); the default does nothing because it does not flip."""

    def finetune_transform(self) -> "BatchTransform":
        """The transform fine-tuning trains with when its ``[[eval]]`` table names no
        ``train_transform``. The published protocol trains with a random crop and a horizontal
        flip only, so a transform with stronger augmentation (colour jitter, blur ...) returns a
        copy without it; the default returns ``self``."""
        return self


class Teacher(nn.Module, abc.ABC):
    """A frozen per-frame model whose outputs a student learns to predict.

    What tasks and ``cache-teacher`` rely on (declared here, never found out by type checks):

    ``label_names``
        The ``K`` class names, index order.
    :meth:`identity`
        Everything the outputs depend on (architecture, weights hash, input size, labels,
        precision), so a cache of the outputs can be keyed and a stale one refused.
    ``forward(frames, output_size=None)``
        RGB frames ``[N, 3, H, W]`` in ``[0, 1]``, any size -> float logits ``[N, K, h, w]`` on the
        grid ``output_size = (h, w)`` laid over the whole frame (``None``: the frames' own size).
        Every teacher takes ``output_size``: it resizes and normalises the frames to its own input
        conventions and maps its logits back onto the asked grid itself. Callers run it without
        gradients.
    Features (optional)
        A teacher that can also give intermediate features (for feature-level distillation) sets
        :attr:`feature_dim` and implements :meth:`forward_with_features`. ``feature_dim = None``
        (the default) means it has none.
    Stored targets (optional)
        A teacher whose targets are not computed from pixels (ground truth read from disk) sets
        :attr:`online` to ``False`` and returns the dataset's store from :meth:`target_store`;
        its ``forward`` is then never run. Online teachers keep the defaults (``online = True``,
        no store).

    A subclass that declares a capability without its method is refused when it is defined.
    """

    label_names: tuple[str, ...]
    #: Channels of the features :meth:`forward_with_features` returns; ``None``: no features.
    feature_dim: int | None = None
    #: ``False``: the targets come from :meth:`target_store`, not from running ``forward`` on frames.
    online: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.feature_dim is not None and cls.forward_with_features is Teacher.forward_with_features:
            raise TypeError(f"teacher {cls.__name__} sets feature_dim but does not implement forward_with_features")
        if not cls.online and cls.target_store is Teacher.target_store:
            raise TypeError(f"teacher {cls.__name__} sets online = False but does not implement target_store")

    def __init__(self) -> None:
        super().__init__()

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """JSON-serialisable description: architecture, checkpoint hash, input size, labels."""

    @abc.abstractmethod
    def forward(self, frames: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        """Logits ``[N, K, *output_size]`` for RGB frames ``[N, 3, H, W]`` in ``[0, 1]``."""

    def forward_with_features(
        self, frames: Tensor, output_size: Sequence[int] | None = None, feature_size: Sequence[int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """The logits of :meth:`forward` and features ``[N, feature_dim, *feature_size]`` over the
        whole frame (``feature_size`` ``None``: ``output_size``). Only for teachers that set
        :attr:`feature_dim`."""
        raise NotImplementedError(f"teacher {type(self).__name__} exposes no features (feature_dim is None)")

    def target_store(self, dataset: Any) -> TargetStore | None:
        """The stored targets of ``dataset`` for a teacher that is not run on frames
        (``online = False``); ``None`` (the default) for teachers that are."""
        return None

    def identity_key(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def freeze(self) -> "Teacher":
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "Teacher":
        # A teacher never leaves eval mode: its batch-norm statistics are part of its identity.
        return super().train(False)


class Hook:
    """Code that runs at fixed points of training, with the trainer at hand.

    The trainer calls, in the order the hooks were registered::

        hook.before_train()                 # after setup (and a resume), before the first step
        while training:
            hook.before_step()              # trainer.step: optimisation steps done so far
            trainer.run_step()              # one optimisation step (all its micro-batches)
            hook.after_step()               # trainer.step: now counts this step too
        hook.after_train()                  # always, also after a failure (see trainer.status)

    ``self.trainer`` is set when the hook is registered (a weak proxy: hooks do not keep the
    trainer alive); through it a hook reads the model, the step, the metric log and the run
    directory (see :class:`hcframe.engine.trainer.Trainer`). Keep :meth:`before_step` cheap: work
    that takes time belongs in :meth:`after_step`. To end training early and cleanly, call
    ``self.trainer.request_stop(reason)``; an exception raised by a hook fails the run.

    A hook whose state must survive a resume returns it from :meth:`state_dict` (tensors and
    plain Python values: checkpoints load with ``weights_only=True``) and takes it back in
    :meth:`load_state_dict`; it is stored in checkpoints under the hook's :attr:`state_key`.
    Recipes add hooks with ``[[hooks]]`` tables (``name`` and the constructor's arguments).
    """

    trainer: Any = None

    @property
    def state_key(self) -> str:
        """Where this hook's state is kept in a checkpoint (default: its class name)."""
        return type(self).__qualname__

    def before_train(self) -> None:
        """Called once, before the first step."""

    def before_step(self) -> None:
        """Called before every optimisation step."""

    def after_step(self) -> None:
        """Called after every optimisation step."""

    def after_train(self) -> None:
        """Called once at the end, whether training completed, stopped or failed."""

    def metric_info(self) -> Sequence[MetricInfo]:
        """Declarations of the numbers this hook logs (``self.trainer.metrics.put(key, value)``);
        see :meth:`PretextTask.metric_info`."""
        return ()

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs to continue as if never stopped (default: nothing)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back what :meth:`state_dict` returned."""



@attrs.frozen
class LabelMaps:
    """What a task shows of a batch (:meth:`PretextTask.visualise`): frames and, for each source
    (``"teacher"``, ``"student"``, ...), a class map per frame, drawn side by side over the frames
    in the palette of :mod:`hcframe.visualise`.

    ``frames``: uint8 ``[N, H, W, 3]`` RGB. ``maps``: source name -> integer ``[N, h, w]`` class
    ids (``255``: no class here), any resolution (drawn nearest-neighbour at the frame's size).
    ``label_names``: the class names by id (for the legend). ``captions``: one per frame, or empty.
    """

    frames: Tensor
    maps: Mapping[str, Tensor]
    label_names: Sequence[str]
    captions: Sequence[str] = ()


class Logger(abc.ABC):
    """Where the numbers a run logs go, besides ``metrics.jsonl``: TensorBoard, Weights & Biases,
    a CSV file, or a plugin's own. Recipes choose them with ``[[loggers]]`` tables (``name`` and
    the constructor's arguments).

    Loggers run on the main process only. The trainer calls, in this order::

        logger.start(run_dir, step, metrics, config)   # step: where training (re)starts
        logger.log_metrics(step, values)                # each metrics.jsonl line, as it is written
        logger.log_images(step, images)                 # on the steps wants_images says
        logger.close()                                  # always, also after a failure

    A resumed run restarts at the step of its checkpoint: what a logger holds about later steps
    (written before the run stopped) must give way to what the resumed run logs, so each step has
    one value (TensorBoard: ``purge_step``).

    An optional dependency is declared in :attr:`requires` (``(module, extra)``): a recipe naming a
    logger whose module is not installed is refused before any work, with the ``pip install``
    line of the extra.
    """

    #: ``(importable module, hcframe extra that installs it)``, or empty when nothing is needed.
    requires: ClassVar[tuple[str, str] | tuple[()]] = ()
    #: Steps between image grids (0: no images).
    image_every: int = 0

    @classmethod
    def missing_dependency(cls) -> str | None:
        """One line saying what to install when :attr:`requires` is not importable, else None."""
        if not cls.requires:
            return None
        import importlib.util

        module, extra = cls.requires
        if importlib.util.find_spec(module) is None:
            return f"needs the {module} package, which is not installed; install it with: pip install 'hcframe[{extra}]'"
        return None

    def start(self, run_dir: Path, step: int, metrics: Sequence[MetricInfo], config: Mapping[str, Any]) -> None:
        """Open the log. ``step``: optimisation steps already done (0, or the resumed checkpoint's);
        ``metrics``: the declarations of every key logged; ``config``: the resolved recipe."""

    @abc.abstractmethod
    def log_metrics(self, step: int, values: Mapping[str, float]) -> None:
        """One ``metrics.jsonl`` line of ``step``: numbers by key (``epoch``, ``lr``, losses, ...,
        ``clips_per_s``, ``time``), in the order the line has them."""

    def wants_images(self, step: int) -> bool:
        """Whether :meth:`log_images` should get the images of ``step`` (every
        :attr:`image_every` steps)."""
        return self.image_every > 0 and step % self.image_every == 0

    def log_images(self, step: int, images: Mapping[str, Any]) -> None:
        """Images of ``step`` by name: uint8 ``[H, W, 3]`` numpy arrays."""

    def close(self) -> None:
        """Flush and close; called once, also when training failed."""
