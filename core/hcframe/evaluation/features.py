"""Frozen-encoder features of every view of every video, extracted once and cached on disk.

A cache file ``<cache_dir>/<key>.pt`` holds the features of one dataset under one model. The key
is the SHA-256 of a JSON description of everything the features depend on: the weights of the
encoder path (shared trunk and the branches ``branch`` uses, buffers included), the branch, the
dataset component table (which fixes the split and the views: test mode, clips, crops), the
evaluation transform's table, the pooling, the device type and the autocast precision. The
description is stored in the file and checked on load, so a hash collision or a stale file is never
used.

Under torchrun every process extracts a share of the videos (:func:`batch_shard`: the batches of
one process's iteration, dealt out in turn, so each video is encoded in the very batch it would be
in one process) and the features are gathered in the dataset's order: the result is the
one-process result. The main process reads and writes the cache; the others extract, or skip when
it had the features already.

Each file's size and SHA-256 are recorded beside it when it is written (``<key>.pt.digest.json``,
see :func:`hcframe.files.record_digest`); a file that does not match them (damaged, truncated,
replaced, or written before records were kept), does not load or does not have the cache's
structure is extracted again, with one log line saying why.

Features come from the encoder (``source = "encoder"``) or, for a ceiling to compare against, from
the per-frame part targets a distillation task trains on (``source = "targets"``: the teacher's
cached maps, or a synthetic world's ground truth), pooled the same way: what a linear probe can
read from the teacher's output alone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from hcframe.data import BAD, collate
from hcframe.engine import distributed as hd
from hcframe.files import check_digest, record_digest, save_torch_atomic
from hcframe.engine.model import MultiTaskModel
from hcframe.engine.precision import autocast
from hcframe.progress import ProgressBar

__all__ = [
    "FeatureRequest",
    "FeatureSet",
    "Pooling",
    "TestViews",
    "batch_shard",
    "device_views",
    "encoder_fingerprint",
    "extract_feature_sets",
    "extract_features",
    "gather_in_dataset_order",
    "load_or_extract_feature_sets",
    "load_or_extract_features",
    "make_loader",
    "sum_over_ranks",
]

CACHE_FORMAT = 1
#: Feature sources: the encoder, or the part targets of a distillation task (a probe's ceiling).
SOURCES = ("encoder", "targets")


@attrs.frozen
class Pooling:
    """How a feature map ``[B, D, t, h, w]`` becomes one vector per clip.

    ``"global"``: the mean over time and space (encoder features use the encoder's own pooling,
    that mean for every shipped encoder), ``D`` values, which say what fired but not where. ``"grid"``: the mean over each cell of a
    ``grid = (t, h, w)`` partition of the map (``adaptive_avg_pool3d``: cells as equal as the map's
    size allows; a grid finer than the map repeats cells), flattened channel-major to ``D * t * h * w``
    values, so a linear probe also sees where in the clip a feature fired.
    """

    kind: str = "global"
    grid: tuple[int, int, int] = (1, 2, 2)

    def __attrs_post_init__(self) -> None:
        if self.kind not in ("global", "grid"):
            raise ValueError(f"pool: expected 'global' or 'grid', got {self.kind!r}")
        if len(self.grid) != 3 or any(int(g) < 1 for g in self.grid):
            raise ValueError(f"grid: expected three positive sizes [t, h, w], got {list(self.grid)}")

    def name(self) -> str:
        """``"global"`` or ``"grid<t>x<h>x<w>"`` (in result keys and cache descriptions)."""
        return "global" if self.kind == "global" else "grid" + "x".join(str(int(g)) for g in self.grid)

    def __call__(self, feature_map: Tensor) -> Tensor:
        if self.kind == "global":
            return feature_map.mean(dim=(2, 3, 4))
        return F.adaptive_avg_pool3d(feature_map, tuple(int(g) for g in self.grid)).flatten(1)


GLOBAL_POOLING = Pooling()


@attrs.frozen
class FeatureSet:
    """Features of a dataset: ``features`` float32 ``[N, V, D]`` (``V`` views per video),
    ``labels`` int64 ``[N]``, ``video_ids`` (``N`` stable ids), the dataset's class count, and
    how many videos could not be read (skipped)."""

    features: Tensor
    labels: Tensor
    video_ids: list[str]
    num_classes: int
    num_bad: int = 0

    @property
    def num_views(self) -> int:
        return int(self.features.shape[1])

    def video_features(self) -> Tensor:
        """``[N, D]``: each video's features averaged over its views."""
        return self.features.mean(dim=1)


def _branch_modules(model: MultiTaskModel, branch: str) -> list[tuple[str, nn.Module]]:
    if branch == "concat":
        return [("trunk", model.trunk)] + ([] if model.split == "none" else [(f"branches.{n}", b) for n, b in model.branches.items()])
    if branch not in model.branches:
        raise ValueError(f"no branch {branch!r}; branches are {', '.join(model.branches)} or 'concat'")
    return [("trunk", model.trunk), (f"branches.{branch}", model.branches[branch])]


def encoder_fingerprint(model: MultiTaskModel, branch: str) -> str:
    """SHA-256 of the weights and buffers that ``model.encode(clips, branch)`` depends on."""
    digest = hashlib.sha256()
    digest.update(f"split={model.split};branch={branch}".encode())
    for prefix, module in _branch_modules(model, branch):
        for name, tensor in module.state_dict().items():
            t = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{prefix}.{name}:{t.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def make_loader(dataset: Any, batch_size: int, num_workers: int, sampler: Any = None, drop_last: bool = False,
                generator: torch.Generator | None = None) -> DataLoader:
    """A DataLoader with :func:`hcframe.data.collate` (bad videos listed under ``bad_videos``)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False if sampler is None else None,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        generator=generator,
    )


def device_views(batch: dict[str, Any], transform: nn.Module, device: torch.device, train: bool) -> list[Tensor]:
    from hcframe.engine.trainer import to_device

    batch = to_device(batch, device)
    return transform(batch, train=train)["views"]


def batch_shard(num_items: int, batch_size: int, world: int, rank: int) -> list[int]:
    """The indices process ``rank`` of ``world`` evaluates: the batches ``rank``, ``rank + world``,
    ... of iterating ``range(num_items)`` in batches of ``batch_size`` (the last may be short), so
    a DataLoader over them with the same ``batch_size`` forms exactly those batches."""
    starts = range(rank * batch_size, num_items, world * batch_size)
    return [i for start in starts for i in range(start, min(start + batch_size, num_items))]


class TestViews:
    """Iterate ``(views, batch)`` over the readable videos of ``dataset``: ``views`` is the list of
    deterministic (``train=False``) device views. Unreadable videos are logged once each and counted
    in ``num_bad``; batches with no readable video are skipped. In a distributed run each process
    iterates its :func:`batch_shard` (``sharded=False``: every video). Progress with the time left
    is shown as ``description`` (a bar with ``progress=True``, for a terminal; else a log line now
    and then, see :class:`hcframe.progress.ProgressBar`)."""

    def __init__(self, dataset: Any, transform: nn.Module, device: torch.device, *, batch_size: int,
                 num_workers: int, log: Callable[[str], None], sharded: bool = True, progress: bool = False,
                 description: str = "") -> None:
        self.dataset, self.transform, self.device, self.log = dataset, transform, device, log
        world, rank = (hd.world_size(), hd.rank()) if sharded else (1, 0)
        indices = batch_shard(len(dataset), batch_size, world, rank) if world > 1 else None
        self.num_items = len(indices) if indices is not None else len(dataset)
        self.loader = make_loader(dataset, batch_size, num_workers, sampler=indices)
        self.num_bad = 0
        self.progress = progress
        self.description = description or f"{type(dataset).__name__}: {len(dataset)} videos"

    def __iter__(self) -> Iterator[tuple[list[Tensor], dict[str, Any]]]:
        from hcframe.engine.trainer import to_device

        with ProgressBar(self.description, len(self.loader), terminal=self.progress, log=self.log, unit="batches") as bar:
            for batch in self.loader:
                bar.advance()
                bad = batch.pop(BAD)
                for b in bad:
                    self.log(f"skipping unreadable video {b.path}: {b.reason}")
                self.num_bad += len(bad)
                if "views" in batch:
                    out = self.transform(to_device(batch, self.device), train=False)
                    if "parts" in out:  # the part maps as the transform aligned them with the views
                        batch["parts"] = out["parts"]
                    yield out["views"], batch


def gather_in_dataset_order(indices: Tensor | None, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Every process's rows, gathered on every process, sorted by dataset index: ``(indices,
    *tensors)`` as one process would have produced them (identity in one process)."""
    gathered = hd.gather_rows([indices, *tensors])
    if gathered[0] is None:
        return tuple(gathered)
    order = torch.argsort(gathered[0], stable=True)
    return tuple(t[order] for t in gathered)


def sum_over_ranks(count: int) -> int:
    """``count`` summed over the processes of a distributed run."""
    if not hd.is_distributed():
        return count
    return int(hd.gather_rows([torch.tensor([count])])[0].sum())


def extract_features(
    model: MultiTaskModel,
    branch: str,
    dataset: Any,
    transform: nn.Module,
    device: torch.device,
    *,
    pooling: Pooling = GLOBAL_POOLING,
    **options: Any,
) -> FeatureSet:
    """Run ``model.encode(view, branch)`` on every view of every video of ``dataset``, pooled by
    ``pooling``; with ``source = "targets"``, pool each view's part targets instead (the dataset's
    ``target_store`` must be set). ``options``: those of :func:`extract_feature_sets`.

    The model must be in eval mode (the caller's job: see :func:`load_or_extract_features`).
    Videos that cannot be read are skipped and counted (each is logged once). Under torchrun each
    process encodes its share (:class:`TestViews`) and every process returns all the features.
    ``progress``: a progress bar (for a terminal); otherwise progress lines go to ``log`` when it
    takes a while.
    """
    return extract_feature_sets(model, [(branch, pooling)], dataset, transform, device, **options)[0]


@torch.no_grad()
def extract_feature_sets(
    model: MultiTaskModel,
    requests: Sequence[tuple[str, Pooling]],
    dataset: Any,
    transform: nn.Module,
    device: torch.device,
    *,
    batch_size: int = 8,
    num_workers: int = 0,
    precision: str = "auto",
    source: str = "encoder",
    log: Callable[[str], None] = lambda m: None,
    progress: bool = False,
) -> list[FeatureSet]:
    """:func:`extract_features` for several ``(branch, pooling)`` requests in one pass over
    ``dataset``: each video is read and augmented once, the trunk and every branch run once per
    view (:meth:`MultiTaskModel.encode_many`); one :class:`FeatureSet` per request, in order."""
    if source not in SOURCES:
        raise ValueError(f"source: expected one of {', '.join(SOURCES)}, got {source!r}")
    if source == "targets" and getattr(dataset, "target_store", None) is None:
        raise ValueError(f"source = \"targets\": dataset {type(dataset).__name__} has no target_store to read part targets from")
    # None: the encoder's own pooling (global)
    encoder_requests = [(branch, None if pooling.kind == "global" else pooling) for branch, pooling in requests]
    branches = ", ".join(dict.fromkeys(branch for branch, _ in requests))
    readable = TestViews(dataset, transform, device, batch_size=batch_size, num_workers=num_workers, log=log,
                         progress=progress, description=f"features ({branches}) of {len(dataset)} videos")
    features: list[list[Tensor]] = [[] for _ in requests]
    labels: list[Tensor] = []
    indices: list[Tensor] = []
    for views, batch in readable:
        if source == "targets":
            per_view = [[pooling(parts.float()) for _, pooling in requests] for parts in batch["parts"]]
        else:
            with autocast(device, precision):
                per_view = [[f.float() for f in model.encode_many(v, encoder_requests)] for v in views]
        for r, out in enumerate(features):
            out.append(torch.stack([view[r] for view in per_view], dim=1).cpu())
        labels.append(batch["label"].view(-1).cpu().long())
        indices.append(batch["index"].view(-1).cpu().long())
    if hd.is_distributed():
        log(f"features of {type(dataset).__name__}: {sum(len(i) for i in indices)} of {len(dataset)} videos "
            f"on process {hd.rank()} of {hd.world_size()}")
    num_bad = sum_over_ranks(readable.num_bad)
    local = [torch.cat(t) if t else None for t in (indices, labels, *features)]
    index, all_labels, *all_features = gather_in_dataset_order(*local)
    if index is None or index.numel() == 0:
        raise RuntimeError(f"no video of dataset {type(dataset).__name__} could be read ({num_bad} unreadable)")
    if bool((all_labels < 0).any()):
        raise ValueError(f"dataset {type(dataset).__name__} has unlabelled videos (label -1); evaluation needs labels")
    ids = [dataset.video_id(int(i)) for i in index]
    num_classes = len(getattr(dataset, "class_names", ()))
    return [FeatureSet(f, all_labels, ids, num_classes, num_bad) for f in all_features]


@attrs.frozen
class FeatureRequest:
    """One set of features :func:`load_or_extract_feature_sets` is asked for: the ``branch``, its
    ``pooling`` and the fingerprint of the weights it reads (None: computed from the model)."""

    branch: str
    pooling: Pooling = GLOBAL_POOLING
    fingerprint: str | None = None


def load_or_extract_features(
    model: MultiTaskModel,
    branch: str,
    dataset_spec: Any,
    transform: nn.Module,
    transform_table: dict[str, Any],
    device: torch.device,
    cache_dir: Path,
    *,
    fingerprint: str | None = None,
    pooling: Pooling = GLOBAL_POOLING,
    **options: Any,
) -> tuple[FeatureSet | None, Path, bool]:
    """Features of the dataset ``dataset_spec`` (a ComponentSpec), from the cache when present:
    :func:`load_or_extract_feature_sets` for one request. Returns the features, the cache file
    and whether it was a cache hit."""
    return load_or_extract_feature_sets(model, [FeatureRequest(branch, pooling, fingerprint)], dataset_spec, transform,
                                        transform_table, device, cache_dir, **options)[0]


def load_or_extract_feature_sets(
    model: MultiTaskModel,
    requests: Sequence[FeatureRequest],
    dataset_spec: Any,
    transform: nn.Module,
    transform_table: dict[str, Any],
    device: torch.device,
    cache_dir: Path,
    *,
    batch_size: int = 8,
    num_workers: int = 0,
    precision: str = "auto",
    targets: Callable[[Any], Any] | None = None,
    targets_identity: Any = None,
    registry: Any = None,
    log: Callable[[str], None] = lambda m: None,
    progress: bool = False,
    dataset: Any = None,
    load_hits: bool = True,
) -> list[tuple[FeatureSet | None, Path, bool]]:
    """Features of the dataset ``dataset_spec`` (a ComponentSpec) for each request, from the cache
    when present; the requests the cache does not hold are extracted together in one pass
    (:func:`extract_feature_sets`) and each is cached in its own file.

    Returns, per request, the features, the cache file and whether it was a cache hit. The dataset
    (``dataset`` when already built from ``dataset_spec``) is only used when features have to be
    extracted; its ``num_views`` is set to 1 (one clip per video in train mode; test-mode
    datasets return all their views regardless). Under torchrun every process calls it: on a
    cache hit only the main process gets the features (the others None).
    ``targets``: pool part targets instead of encoding (``source = "targets"``): called with the
    built dataset, it returns the target store to read; ``targets_identity`` (what the targets
    depend on) then replaces the encoder fingerprint in the cache key. ``load_hits = False``:
    only extract what is missing; a file with the size recorded when it was written counts as a
    hit and is neither read nor loaded (its features are None; a damaged one is extracted again by
    whoever loads it).
    """
    results: list[tuple[FeatureSet | None, Path, bool] | None] = []
    missing: list[tuple[int, Path, str]] = []
    for i, request in enumerate(requests):
        description = {
            "format": CACHE_FORMAT,
            "encoder": (request.fingerprint or encoder_fingerprint(model, request.branch)) if targets is None else None,
            "targets": targets_identity if targets is not None else None,
            "branch": request.branch,
            "dataset": dataset_spec.to_table(),
            "transform": transform_table,
            "pooling": request.pooling.name(),
            "device": device.type,
            "precision": precision,
        }
        blob = json.dumps(description, sort_keys=True, default=str)
        path = Path(cache_dir) / f"{hashlib.sha256(blob.encode()).hexdigest()[:32]}.pt"
        cached, present = None, False
        if hd.is_main_process():
            if load_hits:
                cached = _read_cache(path, blob, log)
                present = cached is not None
            else:  # the record and the size only: whoever loads it checks the hash then
                present = path.is_file() and check_digest(path, hash=False) is None
        if hd.broadcast_flag(present):  # every process takes the same branch
            if cached is not None:
                log(f"features of {dataset_spec.name} ({len(cached.video_ids)} videos, branch {request.branch}) from cache {path}")
            # None when not loaded (load_hits = False) and on the other processes (the fits run on the main one)
            results.append((cached, path, True))
        else:
            results.append(None)
            missing.append((i, path, blob))
    if not missing:
        return results  # type: ignore[return-value]
    dataset = dataset if dataset is not None else dataset_spec.build(registry)
    dataset.num_views = 1
    if targets is not None:
        dataset.target_store = targets(dataset)
    todo = [(requests[i].branch, requests[i].pooling) for i, _, _ in missing]
    what = ", ".join(f"{'branch' if targets is None else 'part targets of'} {b} ({p.name()} pooling)" for b, p in todo)
    log(f"extracting features of {dataset_spec.name} ({len(dataset)} videos, {what}"
        f"{f', over {hd.world_size()} processes' if hd.is_distributed() else ''})")
    extracted = extract_feature_sets(model, todo, dataset, transform, device, batch_size=batch_size, num_workers=num_workers,
                                     precision=precision, source="encoder" if targets is None else "targets",
                                     log=log, progress=progress)
    for (i, path, blob), fs in zip(missing, extracted):
        if hd.is_main_process():
            save_torch_atomic({"description": blob, "features": fs.features, "labels": fs.labels, "video_ids": fs.video_ids,
                               "num_classes": fs.num_classes, "num_bad": fs.num_bad}, path)
            record_digest(path)  # a file that does not match it later is extracted again
        results[i] = (fs, path, False)
    return results  # type: ignore[return-value]


def _read_cache(path: Path, description: str, log: Callable[[str], None]) -> FeatureSet | None:
    """The features in cache file ``path`` when there is one and it is the file that was written
    (size and SHA-256 as recorded), loads, has the cache's structure and ``description``; else
    None (with a log line saying why, when there was a file)."""
    if not path.is_file():
        return None
    cached = _read_feature_cache(path, description)
    if isinstance(cached, FeatureSet):
        return cached
    log(f"feature cache {path}: {cached}; extracting again")
    return None


def _read_feature_cache(path: Path, description: str) -> FeatureSet | str:
    """The features in cache file ``path`` when it is the file that was written (size and
    SHA-256 as recorded), loads, has the cache's structure and ``description``; else why not."""
    problem = check_digest(path)
    if problem is not None:
        return problem
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a file that is not what torch.save wrote
        return f"unreadable ({type(exc).__name__})"
    if not isinstance(stored, dict):
        return f"holds a {type(stored).__name__}, not a feature cache"
    if stored.get("description") != description:
        return "describes other features"
    features, labels, ids = stored.get("features"), stored.get("labels"), stored.get("video_ids")
    if not (isinstance(features, Tensor) and features.ndim == 3 and isinstance(labels, Tensor) and labels.ndim == 1
            and isinstance(ids, list) and len(ids) == len(labels) == len(features)
            and isinstance(stored.get("num_classes"), int) and isinstance(stored.get("num_bad"), int)):
        return "does not have a feature cache's structure"
    return FeatureSet(features, labels, [str(i) for i in ids], stored["num_classes"], stored["num_bad"])
