"""The registered contrastive pretext tasks: ``simclr`` (SimCLR's NT-Xent) and ``moco`` (MoCo v2).

Both ask the engine for two views of each video (``num_views = 2``: two clips at independent random
start times, independently augmented by the batch transform) and own their projection head. The
engine computes the online features of both views through the shared trunk and this task's branch
(``TaskInput.features``); the task only adds its head, its loss, and for MoCo the momentum key
encoder, which is a copy of exactly that trunk + branch (``TaskInput.encoder``).

Metrics logged every step (detached): ``acc`` (top-1 accuracy of picking the positive among all
candidates, chance ``1 / candidates``), ``pos_sim`` / ``neg_sim`` (mean cosine similarity of the
positive pairs / of the negative pairs), and for MoCo ``queue_fill`` (fraction of the queue holding
real keys) and ``momentum``.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hcframe.components import PretextTask, TaskInput, TaskOutput
from hcframe.engine.distributed import world_size
from hcframe.metrics import MetricInfo

from hcframe_contrastive.heads import ProjectionMLP
from hcframe_contrastive.losses import ContrastiveLogits, contrastive_logits, nt_xent_logits
from hcframe_contrastive.momentum import MOMENTUM_SCHEDULES, MomentumEncoder, momentum_at
from hcframe_contrastive.queue import NegativeQueue
from hcframe_contrastive.shuffle_bn import convert_to_sync_batchnorm, shuffled_forward

__all__ = ["KEY_BN_MODES", "SIMCLR_NEGATIVES", "SIMCLR_POOLS", "MoCoTask", "SimCLRTask", "foreground_pool"]

KEY_BN_MODES = ("shuffle", "sync", "running_stats")
SIMCLR_NEGATIVES = ("both_views", "cross_view")
SIMCLR_POOLS = ("mean", "foreground")


def _check_projection(task: str, hidden_dim: int, out_dim: int, num_layers: int) -> None:
    for name, value in (("hidden_dim", hidden_dim), ("out_dim", out_dim), ("num_layers", num_layers)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{task}: {name} must be an integer >= 1, got {value!r}")


def _check_temperature(task: str, temperature: float) -> None:
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"{task}: temperature must be a number > 0, got {temperature!r}")


def _two_views(task: str, inp: TaskInput) -> None:
    if len(inp.features) < 2:
        raise ValueError(
            f"{task}: needs the features of 2 views, got {len(inp.features)}; the dataset must produce num_views >= 2"
        )


def _metric_info(*extra: MetricInfo) -> tuple[MetricInfo, ...]:
    """What both tasks log (see the module docstring), then ``extra``."""
    return (
        MetricInfo("nce", "loss", progress=True),
        MetricInfo("acc", "accuracy", progress=True),
        MetricInfo("pos_sim", "other", plot="contrastive_similarity"),
        MetricInfo("neg_sim", "other", plot="contrastive_similarity"),
        *extra,
    )


def _pooled(output: Any) -> Tensor:
    """Pooled features from what an encoder returns (an EncoderOutput or a ``[B, D]`` tensor)."""
    return output.pooled if hasattr(output, "pooled") else output


_NO_PART_MAPS = (
    "simclr: pool = \"foreground\" weights the features by the part maps of both views, but the batch has none; "
    "add a distillation task whose teacher is stored (parsing_distill with a cached or ground-truth teacher), "
    "or set pool = \"mean\""
)


def foreground_pool(feature_map: Tensor, parts: Tensor, background: int = 0) -> Tensor:
    """``[B, D]``: the mean of ``feature_map`` ``[B, D, t, h, w]`` over its cells, each weighted by
    the share of it that is not ``background`` in the part maps ``parts`` ``[B, K, T, H, W]``
    (probabilities or one-hot, resampled to the map's cells by area). A clip with no person gets
    the plain mean (every weight has a small floor). Weights and sums in float32."""
    person = 1.0 - parts[:, background].float()
    weights = F.adaptive_avg_pool3d(person[:, None], tuple(feature_map.shape[2:])).clamp_min(0.0) + 1e-4
    weighted = (feature_map.float() * weights).sum(dim=(2, 3, 4))
    return (weighted / weights.sum(dim=(2, 3, 4))).to(feature_map.dtype)


class SimCLRTask(PretextTask):
    """SimCLR: contrast two views of each clip against the other clips of the (global) batch.

    Both views' pooled features go through one projection head whose batch norm normalises over
    both views of the *global* batch (:class:`GlobalBatchNorm1d`, SimCLR's global BN: in a
    distributed run the statistics are all-reduced across ranks, with gradients; plain batch norm
    in one process). The positive of a view is the other view of the same video.

    Args:
        temperature: softmax temperature ``T`` (> 0). SimCLR uses 0.1 with large batches and up to
            0.5 with small ones.
        negatives: ``"both_views"`` (default): SimCLR's NT-Xent (:func:`nt_xent`); each of the
            ``2N`` embeddings is an anchor and its negatives are the other ``2N - 2`` embeddings,
            both views. ``"cross_view"``: the CLIP / MoCo v3 form (:func:`info_nce`); the negatives
            of a view are only the other view's ``N - 1`` embeddings (hcframe's ``simclr`` before
            NT-Xent became the default).
        symmetric: ``"cross_view"`` only: average the view0 -> view1 and view1 -> view0 losses
            (else view0 -> view1 only). NT-Xent always uses both views as anchors, so
            ``symmetric = false`` with ``negatives = "both_views"`` is refused.
        gather: in a distributed run take the candidates from every rank (gradients flow back to
            each rank's samples); the loss is the mean over local anchors, so with DDP's gradient
            averaging R ranks train exactly like one process on the global batch.
        hidden_dim, out_dim, num_layers, batch_norm: the :class:`ProjectionMLP`.
        pool: how each view's feature map becomes the vector the head projects. ``"mean"``
            (default): the encoder's pooled features. ``"foreground"``: the mean over the map
            weighted by how much of each cell the person covers, ``1 -`` the background channel
            (channel 0, LIP's and the synthetic world's ``Background``) of that view's part maps
            (``batch["parts"]``, which a distillation task with a stored teacher puts in the batch),
            so the human prior decides where contrastive learning looks and background identity
            cues weigh less. The evaluation protocols still read the encoder's own pooling.
    """

    num_views = 2
    #: NT-Xent contrasts a video with the others of the batch: one video has no negatives.
    min_batch_size = 2

    def __init__(
        self,
        temperature: float = 0.1,
        negatives: Literal["both_views", "cross_view"] = "both_views",
        symmetric: bool = True,
        gather: bool = True,
        hidden_dim: int = 512,
        out_dim: int = 128,
        num_layers: int = 2,
        batch_norm: bool = True,
        pool: Literal["mean", "foreground"] = "mean",
    ) -> None:
        super().__init__()
        _check_temperature("simclr", temperature)
        _check_projection("simclr", hidden_dim, out_dim, num_layers)
        if pool not in SIMCLR_POOLS:
            raise ValueError(f"simclr: pool must be one of {', '.join(SIMCLR_POOLS)}, got {pool!r}")
        self.pool = pool
        if negatives not in SIMCLR_NEGATIVES:
            raise ValueError(f"simclr: negatives must be one of {', '.join(SIMCLR_NEGATIVES)}, got {negatives!r}")
        if negatives == "both_views" and not symmetric:
            raise ValueError(
                "simclr: symmetric = false applies only to negatives = 'cross_view'; "
                "NT-Xent (negatives = 'both_views') always uses both views as anchors"
            )
        self.temperature = float(temperature)
        self.negatives = negatives
        self.symmetric = symmetric
        self.gather = gather
        self.projection = {
            "hidden_dim": hidden_dim, "out_dim": out_dim, "num_layers": num_layers,
            "batch_norm": batch_norm, "global_batch_norm": True,
        }
        self.head: ProjectionMLP | None = None
        self._warned_no_negatives = False

    def setup(self, encoder: nn.Module, feature_dim: int) -> None:
        self.head = ProjectionMLP(feature_dim, **self.projection)

    def check_dataset(self, dataset: Any) -> None:
        if self.pool == "foreground" and getattr(dataset, "target_store", None) is None:
            raise ValueError(_NO_PART_MAPS)

    def metric_info(self) -> tuple[MetricInfo, ...]:
        return _metric_info()

    def logits(self, inp: TaskInput) -> ContrastiveLogits:
        """The similarity matrix of this step (what the loss and the metrics are computed from)."""
        if self.head is None:
            raise RuntimeError("simclr: setup(encoder, feature_dim) was not called")
        _two_views("simclr", inp)
        if self.pool == "foreground":
            parts = inp.batch.get("parts")
            if parts is None or len(parts) < 2:
                raise ValueError(_NO_PART_MAPS)
            first, second = (foreground_pool(inp.features[v].feature_map, parts[v]) for v in (0, 1))
        else:
            first, second = inp.features[0].pooled, inp.features[1].pooled
        embeddings = self.head(torch.cat([first, second], dim=0))
        a, b = embeddings[: first.shape[0]], embeddings[first.shape[0] :]
        if self.negatives == "both_views":
            return nt_xent_logits(a, b, self.temperature, gather=self.gather)
        return contrastive_logits(a, b, None, self.temperature, symmetric=self.symmetric, gather=self.gather)

    def forward(self, inp: TaskInput) -> TaskOutput:
        logits = self.logits(inp)
        if logits.similarities.shape[1] < 2:
            # A batch left with one clip (its other videos unreadable and dropped) has only the
            # positive: the loss is 0 with no gradient and acc is 1 by construction. Say so once,
            # and log no accuracy or similarities for it.
            if not self._warned_no_negatives:
                self._warned_no_negatives = True
                warnings.warn(
                    "simclr: a batch held a single clip (its other videos were unreadable and dropped), so it had "
                    "no negatives and taught nothing (nce 0); its acc and similarities are not logged",
                    RuntimeWarning, stacklevel=2,
                )  # fmt: skip
            return TaskOutput(losses={"nce": logits.loss()}, metrics={})
        return TaskOutput(losses={"nce": logits.loss()}, metrics=logits.metrics())


class MoCoTask(PretextTask):
    """MoCo v2: a momentum key encoder and a queue of negatives.

    Queries: the online features of view 0 through the projection head. Keys: view 1 through the
    momentum copy of this task's encoder (trunk + branch) and of the head, without gradient. The
    positive of a query is its key; the negatives are the queue. Each training step, in order:
    EMA update of the key encoder and key head towards the online ones (momentum from
    ``momentum_schedule``; once per optimiser step, also with gradient accumulation), keys, loss,
    then the keys are enqueued (gathered from all ranks). In eval mode nothing is updated or
    enqueued. The keys are computed by the key encoder from ``batch["views"]`` (a copy of
    ``TaskInput.encoder``, i.e. the trunk and this task's branch, made in :meth:`setup`).

    Args:
        temperature: softmax temperature ``T`` (> 0); MoCo v2 uses 0.07.
        queue_size: number of negatives (>= 1; any value, the queue wraps around). 16384 for
            Kinetics-scale data; 2048 is recommended for small datasets (UCF101, HMDB51, the
            synthetic world) so the queue does not hold keys much older than an epoch. Keep it below
            the number of training videos, or the queue holds the query's own video as negatives.
        momentum: EMA momentum in [0, 1] (0.99 for short runs; MoCo uses 0.999 for long ones).
        momentum_schedule: ``"constant"``, or ``"cosine"`` rising from ``momentum`` to 1 over
            ``max_steps``.
        symmetric: also use view 1 as query against keys of view 0 (two key forwards per step),
            averaging both losses; only view 1's keys are enqueued.
        key_bn: how the key encoder's batch norm avoids leaking the positive: ``"shuffle"``
            (shuffling BN across ranks), ``"sync"`` (SyncBatchNorm; CUDA only when distributed) or
            ``"running_stats"`` (eval-mode BN); see :mod:`hcframe_contrastive.shuffle_bn`, which
            also explains the single-process effect.
        hidden_dim, out_dim, num_layers, batch_norm: the :class:`ProjectionMLP`.
        seed: seeds the queue's initial entries and the shuffling permutations.
    """

    num_views = 2

    def __init__(
        self,
        temperature: float = 0.07,
        queue_size: int = 16384,
        momentum: float = 0.99,
        momentum_schedule: Literal["constant", "cosine"] = "constant",
        symmetric: bool = False,
        key_bn: Literal["shuffle", "sync", "running_stats"] = "shuffle",
        hidden_dim: int = 512,
        out_dim: int = 128,
        num_layers: int = 2,
        batch_norm: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_temperature("moco", temperature)
        _check_projection("moco", hidden_dim, out_dim, num_layers)
        if not isinstance(queue_size, int) or isinstance(queue_size, bool) or queue_size < 1:
            raise ValueError(f"moco: queue_size must be an integer >= 1 (2048 for small datasets), got {queue_size!r}")
        if not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
            raise ValueError(f"moco: momentum must be in [0, 1] (typically 0.99-0.999), got {momentum!r}")
        if momentum_schedule not in MOMENTUM_SCHEDULES:
            raise ValueError(f"moco: momentum_schedule must be one of {', '.join(MOMENTUM_SCHEDULES)}, got {momentum_schedule!r}")
        if key_bn not in KEY_BN_MODES:
            raise ValueError(f"moco: key_bn must be one of {', '.join(KEY_BN_MODES)}, got {key_bn!r}")
        self.temperature = float(temperature)
        self.queue_size = queue_size
        self.momentum = float(momentum)
        self.momentum_schedule = momentum_schedule
        self.symmetric = symmetric
        self.key_bn = key_bn
        self.seed = seed
        self.projection = {"hidden_dim": hidden_dim, "out_dim": out_dim, "num_layers": num_layers, "batch_norm": batch_norm}
        self.head: ProjectionMLP | None = None
        self.key_encoder: MomentumEncoder | None = None
        self.key_head: MomentumEncoder | None = None
        self.queue: NegativeQueue | None = None
        # With gradient accumulation the engine calls forward several times per optimiser step;
        # the online weights only change once per step, so the EMA moves once per step too.
        self._momentum_updated_at: int | None = None

    def setup(self, encoder: nn.Module, feature_dim: int) -> None:
        self.head = ProjectionMLP(feature_dim, **self.projection)
        self.key_encoder = MomentumEncoder(encoder)
        self.key_head = MomentumEncoder(self.head)
        if self.key_bn == "sync":
            self.key_encoder.module = convert_to_sync_batchnorm(self.key_encoder.module)
            self.key_head.module = convert_to_sync_batchnorm(self.key_head.module)
        self.queue = NegativeQueue(self.projection["out_dim"], self.queue_size, seed=self.seed)

    def metric_info(self) -> tuple[MetricInfo, ...]:
        return _metric_info(MetricInfo("queue_fill", "fraction"), MetricInfo("momentum", "other"))

    @torch.no_grad()
    def keys(self, clips: Tensor, shuffle_seed: int) -> Tensor:
        """Key embeddings ``[B, out_dim]`` of ``clips`` by the key encoder and key head."""
        assert self.key_encoder is not None and self.key_head is not None
        key_encoder, key_head = self.key_encoder, self.key_head

        def encode(batch: Tensor) -> Tensor:
            return key_head(_pooled(key_encoder(batch)))

        if self.key_bn == "sync" and world_size() > 1 and clips.device.type == "cpu":
            raise ValueError(
                "moco: key_bn = 'sync' needs CUDA in a multi-process run (PyTorch's SyncBatchNorm); "
                "use key_bn = 'shuffle' on CPU"
            )
        if self.key_bn == "running_stats":
            key_encoder.eval()
            key_head.eval()
            try:
                return encode(clips)
            finally:
                key_encoder.train(self.training)
                key_head.train(self.training)
        return shuffled_forward(encode, clips, shuffle_seed)

    def momentum_update(self, encoder: nn.Module, step: int, max_steps: int) -> float:
        """EMA step of the key encoder towards ``encoder`` and of the key head towards the head."""
        assert self.key_encoder is not None and self.key_head is not None and self.head is not None
        momentum = momentum_at(step, max_steps, self.momentum, self.momentum_schedule)
        self.key_encoder.update(encoder, momentum)
        self.key_head.update(self.head, momentum)
        return momentum

    def logits(self, inp: TaskInput) -> tuple[ContrastiveLogits, Tensor]:
        """The similarity matrix of this step and the keys to enqueue (no side effects)."""
        if self.head is None or self.queue is None:
            raise RuntimeError("moco: setup(encoder, feature_dim) was not called")
        _two_views("moco", inp)
        views = inp.batch["views"]
        negatives = self.queue.negatives()
        base_seed = self.seed * 1_000_003 + 2 * inp.step
        query = self.head(inp.features[0].pooled)
        key = self.keys(views[1], base_seed + 1)
        parts = [contrastive_logits(query, key, negatives, self.temperature)]
        if self.symmetric:
            query_second = self.head(inp.features[1].pooled)
            key_first = self.keys(views[0], base_seed)
            parts.append(contrastive_logits(query_second, key_first, negatives, self.temperature))
        combined = ContrastiveLogits(
            torch.cat([p.similarities for p in parts]), torch.cat([p.targets for p in parts]), self.temperature
        )
        return combined, key

    def forward(self, inp: TaskInput) -> TaskOutput:
        if self.head is None or self.queue is None:
            raise RuntimeError("moco: setup(encoder, feature_dim) was not called")
        momentum = momentum_at(inp.step, inp.max_steps, self.momentum, self.momentum_schedule)
        if self.training and self._momentum_updated_at != inp.step:
            self.momentum_update(inp.encoder, inp.step, inp.max_steps)
            self._momentum_updated_at = inp.step
        logits, key = self.logits(inp)
        loss = logits.loss()
        metrics: dict[str, Tensor | float] = dict(logits.metrics())
        if self.training:
            self.queue.enqueue(key)
            metrics["momentum"] = momentum
        metrics["queue_fill"] = self.queue.fill_fraction()
        return TaskOutput(losses={"nce": loss}, metrics=metrics)
