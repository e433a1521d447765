"""Frozen-encoder features of every view of every video, extracted once and cached on disk.

A cache file ``<cache_dir>/<key>.pt`` holds the features of one dataset under one model. The key
is the SHA-256 of a JSON description of everything the features depend on: the weights of the
encoder path (shared trunk and the branches ``branch`` uses, buffers included), the branch, the
dataset component table (which fixes the split, the test mode, ``num_clips``, ``num_crops``), the
evaluation transform's table, the device type and the autocast precision. The description is
stored in the file and checked on load, so a hash collision or a stale file is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import attrs
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from hcframe.data import BAD, collate
from hcframe.engine.model import MultiTaskModel
from hcframe.engine.precision import autocast_dtype, resolve_precision, training_autocast

__all__ = [
    "FeatureSet",
    "TestViews",
    "autocast_context",
    "device_views",
    "encoder_fingerprint",
    "extract_features",
    "load_or_extract_features",
    "make_loader",
]

CACHE_FORMAT = 1


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


def autocast_context(device: torch.device, precision: str) -> Any:
    """Autocast for ``precision`` (``"auto"``: bf16 on CUDA, fp32 elsewhere, as in training; the
    same context as a training step, since fine-tuning runs backward under it)."""
    return training_autocast(device.type, autocast_dtype(resolve_precision(precision, device.type)))


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


class TestViews:
    """Iterate ``(views, batch)`` over the readable videos of ``dataset``: ``views`` is the list of
    deterministic (``train=False``) device views. Unreadable videos are logged once each and counted
    in ``num_bad``; batches with no readable video are skipped."""

    def __init__(self, dataset: Any, transform: nn.Module, device: torch.device, *, batch_size: int,
                 num_workers: int, log: Callable[[str], None]) -> None:
        self.dataset, self.transform, self.device, self.log = dataset, transform, device, log
        self.loader = make_loader(dataset, batch_size, num_workers)
        self.num_bad = 0

    def __iter__(self) -> Iterator[tuple[list[Tensor], dict[str, Any]]]:
        for batch in self.loader:
            bad = batch.pop(BAD)
            for b in bad:
                self.log(f"skipping unreadable video {b.path}: {b.reason}")
            self.num_bad += len(bad)
            if "views" in batch:
                yield device_views(batch, self.transform, self.device, train=False), batch


@torch.no_grad()
def extract_features(
    model: MultiTaskModel,
    branch: str,
    dataset: Any,
    transform: nn.Module,
    device: torch.device,
    *,
    batch_size: int = 8,
    num_workers: int = 0,
    precision: str = "auto",
    log: Callable[[str], None] = lambda m: None,
) -> FeatureSet:
    """Run ``model.encode(view, branch)`` on every view of every video of ``dataset``.

    The model must be in eval mode (the caller's job: see :func:`load_or_extract_features`).
    Videos that cannot be read are skipped and counted (each is logged once).
    """
    readable = TestViews(dataset, transform, device, batch_size=batch_size, num_workers=num_workers, log=log)
    features: list[Tensor] = []
    labels: list[Tensor] = []
    ids: list[str] = []
    for views, batch in readable:
        with autocast_context(device, precision):
            per_view = [model.encode(v, branch).float() for v in views]
        features.append(torch.stack(per_view, dim=1).cpu())
        labels.append(batch["label"].view(-1).cpu().long())
        ids.extend(dataset.video_id(int(i)) for i in batch["index"].view(-1))
    if not features:
        raise RuntimeError(f"no video of dataset {type(dataset).__name__} could be read ({readable.num_bad} unreadable)")
    all_labels = torch.cat(labels)
    if bool((all_labels < 0).any()):
        raise ValueError(f"dataset {type(dataset).__name__} has unlabelled videos (label -1); evaluation needs labels")
    return FeatureSet(torch.cat(features), all_labels, ids, len(getattr(dataset, "class_names", ())), readable.num_bad)


def _save_atomic(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


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
    batch_size: int = 8,
    num_workers: int = 0,
    precision: str = "auto",
    registry: Any = None,
    log: Callable[[str], None] = lambda m: None,
) -> tuple[FeatureSet, Path, bool]:
    """Features of the dataset ``dataset_spec`` (a ComponentSpec), from the cache when present.

    Returns the features, the cache file and whether it was a cache hit. The dataset is only built
    when the features have to be extracted; its ``num_views`` is set to 1 (one clip per video in
    train mode; test-mode datasets return all their views regardless).
    """
    description = {
        "format": CACHE_FORMAT,
        "encoder": fingerprint or encoder_fingerprint(model, branch),
        "branch": branch,
        "dataset": dataset_spec.to_table(),
        "transform": transform_table,
        "device": device.type,
        "precision": precision,
    }
    blob = json.dumps(description, sort_keys=True, default=str)
    key = hashlib.sha256(blob.encode()).hexdigest()[:32]
    path = Path(cache_dir) / f"{key}.pt"
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: extract again and replace it
            log(f"feature cache {path} is unreadable ({type(exc).__name__}: {exc}); extracting again")
        else:
            if stored.get("description") == blob:
                fs = FeatureSet(stored["features"], stored["labels"], list(stored["video_ids"]),
                                int(stored["num_classes"]), int(stored["num_bad"]))
                log(f"features of {dataset_spec.name} ({len(fs.video_ids)} videos, branch {branch}) from cache {path}")
                return fs, path, True
            log(f"feature cache {path} describes other features; extracting again")
    dataset = dataset_spec.build(registry)
    dataset.num_views = 1
    log(f"extracting features of {dataset_spec.name} ({len(dataset)} videos, branch {branch})")
    fs = extract_features(model, branch, dataset, transform, device, batch_size=batch_size,
                          num_workers=num_workers, precision=precision, log=log)
    _save_atomic(
        {"description": blob, "features": fs.features, "labels": fs.labels, "video_ids": fs.video_ids,
         "num_classes": fs.num_classes, "num_bad": fs.num_bad},
        path,
    )
    return fs, path, False
