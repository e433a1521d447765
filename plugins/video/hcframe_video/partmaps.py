"""The part-map store: per-frame body-part targets on disk (teacher caches and ground truth).

One store is one folder::

    <root>/meta.json            what the maps are (see below)
    <root>/videos/<safe id>.npz one file per video

``meta.json`` holds::

    format          "hcframe-partmaps"
    format_version  1
    kind            "labels" | "topk" | "logits"
    label_names     the K class names, index = class id (e.g. the 20 LIP labels)
    k               number of classes kept per pixel (kind "topk" only, else null)
    resolution      [h, w] of every map, or null when it varies per video (then ``scale`` may say
                    map size = frame size * scale)
    scale           float or null
    identity        the producer's identity dict (a teacher's ``identity()``, or the synthetic
                    world's "synthetic ground truth" + generator parameters). A reader given an
                    ``expected_identity`` refuses a store whose identity differs (a stale cache).
    created         {"time": ISO-8601 UTC, "host": ..., "hcframe_video": version}

Video files
-----------
Each ``.npz`` is an ordinary numpy archive (``numpy.load`` reads it) whose members are deflate-
compressed *separately*, so one frame is read and decompressed without touching the others:

``frame_indices``    int64 ``[F]``: the frame numbers stored, ascending
``f<frame:06d>``     one member per stored frame, by kind:

    labels   uint8 ``[h, w]``: the class id per pixel; 255 = unknown
    topk     uint8 ``[2, k, h, w]``: ``[0]`` class ids, ``[1]`` probabilities quantised to
             1/255 steps (see below); a pixel whose quantised probabilities are all 0 is unknown
    logits   float16 ``[K, h, w]``: raw logits

The file name is the video id (its path relative to the dataset root) made filesystem-safe by
:func:`safe_name`: characters outside ``[A-Za-z0-9._-]`` become ``%XX`` (so ``/`` -> ``%2F``), which
keeps distinct ids distinct. Archives are written with a fixed zip timestamp, so the same maps give
the same bytes.

Each kind is one codec class (:class:`LabelsCodec`, :class:`TopKCodec`, :class:`LogitsCodec`;
:data:`CODECS` by name), which the writer, the store and the teacher cache all use.

Reading (``PartMapStore.read``) returns float32 probabilities ``[K, T, h, w]``:

labels  one-hot; unknown pixels (255) are all-zero (losses ignore cells that sum to 0)
topk    the k stored probabilities scattered to their classes (renormalised to sum 1)
logits  ``softmax`` over K in float32. No temperature here: distillation applies its own.

Top-k quantisation bound: the writer renormalises the k kept probabilities to sum to 1, then rounds
them to multiples of 1/255 with the largest-remainder rule so the stored integers sum to exactly 255.
Every value read back therefore differs from the renormalised top-k probability it stands for by
less than 1/255 (< 0.0040), and each pixel's values still sum to exactly 1.

Frames a store does not contain: caches may hold only every n-th frame. ``read`` then uses the
nearest stored frame (ties go to the earlier one); :meth:`PartMapStore.frame_indices` lists what a
video holds.

Writing is atomic per video (a temporary file in the same folder, then ``os.replace``), so a writer
that is interrupted leaves only complete videos; a new writer on the same folder resumes, skipping
videos for which :meth:`PartMapWriter.check_video` finds the file intact.

Verification: the zip format records the CRC-32 and size of every member when it is written.
:meth:`PartMapWriter.check_video` reads a whole file back against them and checks its structure
(``frame_indices``, one map per listed frame, each of the store's type and shape), so a truncated,
damaged or foreign file is made again rather than counted as done; readers report such a file with
one line naming it (:class:`PartMapError`). Arrays are never unpickled (``allow_pickle=False``).
"""

from __future__ import annotations

import abc
import datetime
import io
import json
import os
import socket
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import torch

from hcframe.data import TargetStore
from hcframe.files import atomic_path, write_json_atomic

__all__ = [
    "CODECS",
    "FORMAT",
    "FORMAT_VERSION",
    "KINDS",
    "LIP_LABELS",
    "UNKNOWN",
    "LabelsCodec",
    "LogitsCodec",
    "PartMapCodec",
    "PartMapError",
    "PartMapStore",
    "PartMapWriter",
    "TOPK_MAX_ERROR",
    "TopKCodec",
    "codec_for",
    "flip_permutation",
    "quantise_topk",
    "safe_name",
    "topk_from_probabilities",
]

FORMAT = "hcframe-partmaps"
FORMAT_VERSION = 1
#: The label value meaning "no target here" in kind ``labels``.
UNKNOWN = 255
#: Upper bound on |read-back probability - renormalised top-k probability| for kind ``topk``.
TOPK_MAX_ERROR = 1.0 / 255.0

#: The 20 LIP (Look Into Person) labels, in their index order.
LIP_LABELS: tuple[str, ...] = (
    "Background", "Hat", "Hair", "Glove", "Sunglasses", "Upper-clothes", "Dress", "Coat", "Socks",
    "Pants", "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm", "Left-leg",
    "Right-leg", "Left-shoe", "Right-shoe",
)  # fmt: skip

_META = "meta.json"
_VIDEOS = "videos"
_FRAME_INDICES = "frame_indices"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed so identical maps give identical bytes
_SAFE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
# What reading a damaged, truncated or foreign archive raises (ValueError: an object array).
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


class PartMapError(ValueError):
    """A part-map store is missing, stale, or does not hold what was asked (one-line message)."""


def safe_name(video_id: str) -> str:
    """The file stem for ``video_id``: ``[A-Za-z0-9._-]`` kept, every other byte as ``%XX``.

    Injective (``%`` itself is escaped), so two ids never share a file. A leading ``.`` is escaped
    too, so no stem is hidden or equal to ``.``/``..``.
    """
    if not video_id:
        raise PartMapError("video id must be a non-empty string")
    out = []
    for i, byte in enumerate(video_id.encode("utf-8")):
        ch = chr(byte)
        if ch in _SAFE_CHARS and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def flip_permutation(label_names: Sequence[str]) -> list[int]:
    """Where each class goes when the image is flipped horizontally: ``perm[c]`` is the class that
    ``c`` becomes. A person's left arm seen in a mirrored image is their right arm, so classes named
    ``Left<x>``/``Right<x>`` (any case, ``-``/``_``/space or nothing after the side) swap; all others
    stay. For LIP: 14<->15 (arms), 16<->17 (legs), 18<->19 (shoes). Flip part maps with
    ``maps[perm]``-style indexing: ``flipped[:, perm[c]] = maps[:, c]`` (the permutation is its own
    inverse, so ``flipped = maps[:, perm]`` is the same thing)."""
    import re

    def side_and_rest(name: str) -> tuple[str, str] | None:
        match = re.fullmatch(r"(left|right)[-_ ]?(.*)", name.strip(), flags=re.IGNORECASE)
        return (match.group(1).lower(), match.group(2).lower()) if match else None

    index = {}
    for c, name in enumerate(label_names):
        parsed = side_and_rest(name)
        if parsed is not None:
            index[parsed] = c
    perm = list(range(len(label_names)))
    for (side, rest), c in index.items():
        other = index.get(("right" if side == "left" else "left", rest))
        if other is not None:
            perm[c] = other
    return perm


def _frame_member(frame: int) -> str:
    return f"f{frame:06d}"


def _canonical(obj: Any) -> str:
    """JSON text used to compare identities (key order and tuple/list differences do not matter)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# --- top-k helpers ---------------------------------------------------------------------------------
def quantise_topk(probabilities: np.ndarray) -> np.ndarray:
    """Renormalise ``[k, h, w]`` non-negative values per pixel and round them to uint8 steps of 1/255
    that sum to exactly 255 (largest remainder). All-zero pixels stay all-zero (unknown)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 3:
        raise PartMapError(f"top-k probabilities must be [k, h, w], got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise PartMapError("top-k probabilities must be finite and non-negative")
    total = p.sum(axis=0, keepdims=True)
    known = total > 0
    scaled = np.where(known, p / np.where(known, total, 1.0), 0.0) * 255.0
    floor = np.floor(scaled)
    remainder = scaled - floor
    missing = np.where(known[0], 255 - floor.sum(axis=0), 0).astype(np.int64)  # in [0, k-1]
    # Give one extra step to the `missing` entries with the largest remainders (stable: lower slot wins).
    order = np.argsort(-remainder, axis=0, kind="stable")
    rank = np.argsort(order, axis=0, kind="stable")  # rank[i] = position of slot i in that order
    quantised = floor + (rank < missing[None]).astype(np.float64)
    return quantised.astype(np.uint8)


def topk_from_probabilities(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full ``[K, h, w]`` probabilities -> (class ids uint8 ``[k, h, w]``, their probabilities
    float32 ``[k, h, w]``), most probable first."""
    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim != 3 or not 1 <= k <= p.shape[0]:
        raise PartMapError(f"need [K, h, w] probabilities with 1 <= k <= K, got shape {p.shape} and k={k}")
    order = np.argsort(-p, axis=0, kind="stable")[:k]
    return order.astype(np.uint8), np.take_along_axis(p, order, axis=0)


# --- the kinds: one codec per stored form ----------------------------------------------------------
class PartMapCodec(abc.ABC):
    """One kind of part map: how it is made from teacher logits, stored, and read back.

    A codec is made for a store's ``num_classes`` (and ``k``, for kinds that keep ``k`` classes):

    - :meth:`from_logits`: teacher logits ``[n, K, h, w]`` (any device) -> one value per frame that
      :meth:`PartMapWriter.write_video` takes (computed on the logits' device; only what is stored
      crosses to the CPU);
    - :meth:`encode`: one frame's value -> the array stored for it (checked);
    - :meth:`decode`: stored arrays of ``T`` frames stacked ``[T, ...]`` -> float32 probabilities
      ``[K, T, h, w]``.

    :data:`CODECS` maps each kind's ``name`` (the ``kind`` in ``meta.json``) to its codec.
    """

    name: ClassVar[str]
    #: The most classes the stored form can name (class ids are uint8; 255 means unknown).
    max_classes: ClassVar[int | None] = UNKNOWN

    def __init__(self, num_classes: int, k: int | None = None) -> None:
        if num_classes < 1 or (self.max_classes is not None and num_classes > self.max_classes):
            most = "" if self.max_classes is None else f"..{self.max_classes}"
            raise PartMapError(f"label_names: need 1{most} names for kind {self.name!r}, got {num_classes}")
        self.num_classes = num_classes
        self.k = self.check_k(k, num_classes)

    @classmethod
    def check_k(cls, k: int | None, num_classes: int) -> int | None:
        """The ``k`` this kind stores; only :class:`TopKCodec` takes one."""
        if k is not None:
            raise PartMapError(f"k: only kind 'topk' takes k, got k={k!r} for kind {cls.name!r}")
        return None

    @classmethod
    def fit_k(cls, k: int | None, num_classes: int) -> int | None:
        """``k`` as a cache of ``num_classes`` classes uses it: ignored by kinds without one."""
        return None

    def frames_of(self, stacked: Any) -> Sequence[Any]:
        """A stacked array (or sequence) of frame values -> one value per frame."""
        return stacked

    def stored_problem(self, array: np.ndarray) -> str | None:
        """Why ``array`` (read from a file) is not one frame as this codec stores it, or None:
        the stored dtype, then :meth:`stored_lead` before the ``[h, w]`` of the map."""
        lead = self.stored_lead()
        if array.dtype != self.stored_dtype or array.ndim != len(lead) + 2:
            return f"a {array.dtype} array of shape {list(array.shape)}, not a {self.name} map"
        if tuple(array.shape[: len(lead)]) != lead:
            return f"shape {list(array.shape)}, not [{', '.join(map(str, lead))}, h, w]"
        return None

    #: The dtype a frame is stored as.
    stored_dtype: ClassVar[type] = np.uint8

    def stored_lead(self) -> tuple[int, ...]:
        """The dimensions a stored frame has before its ``[h, w]``."""
        return ()

    @abc.abstractmethod
    def from_logits(self, logits: torch.Tensor) -> list[Any]: ...

    @abc.abstractmethod
    def encode(self, value: Any, where: str) -> np.ndarray: ...

    @abc.abstractmethod
    def decode(self, raw: np.ndarray) -> torch.Tensor: ...


class LabelsCodec(PartMapCodec):
    """``labels``: the class id per pixel, uint8 ``[h, w]`` (255 = unknown); read as one-hot, with
    unknown pixels all-zero. Values: integer ``[h, w]``; from logits: the argmax."""

    name = "labels"

    def from_logits(self, logits: torch.Tensor) -> list[Any]:
        return list(logits.argmax(dim=1).to(torch.uint8).cpu().numpy())

    def encode(self, value: Any, where: str) -> np.ndarray:
        labels = np.asarray(value)
        if labels.ndim != 2:
            raise PartMapError(f"{where}: labels must be [h, w], got shape {labels.shape}")
        bad = (labels != UNKNOWN) & ((labels < 0) | (labels >= self.num_classes))
        if bad.any():
            raise PartMapError(f"{where}: label {int(labels[bad].flat[0])} outside 0..{self.num_classes - 1} (255 = unknown)")
        return labels.astype(np.uint8)

    def decode(self, raw: np.ndarray) -> torch.Tensor:
        labels = torch.from_numpy(raw.astype(np.int64))  # [T, h, w]
        known = labels != UNKNOWN
        onehot = torch.zeros((self.num_classes, *labels.shape), dtype=torch.float32)
        onehot.scatter_(0, labels.clamp(max=self.num_classes - 1).unsqueeze(0), known.unsqueeze(0).float())
        return onehot


class TopKCodec(PartMapCodec):
    """``topk``: uint8 ``[2, k, h, w]``, ``[0]`` the ``k`` most probable class ids, ``[1]`` their
    probabilities renormalised and quantised to 1/255 (:func:`quantise_topk`); read as those
    probabilities scattered to their classes. Values: ``(class_ids [k, h, w], probabilities
    [k, h, w])`` or full probabilities ``[K, h, w]``; from logits: softmax, then the top ``k``."""

    name = "topk"

    @classmethod
    def check_k(cls, k: int | None, num_classes: int) -> int | None:
        if k is None or not 1 <= int(k) <= num_classes:
            raise PartMapError(f"k: kind 'topk' needs 1 <= k <= {num_classes}, got {k!r}")
        return int(k)

    @classmethod
    def fit_k(cls, k: int | None, num_classes: int) -> int | None:
        if k is None or k < 1:
            raise PartMapError(f"k must be >= 1 for kind 'topk', got {k}")
        return min(int(k), num_classes)

    def stored_lead(self) -> tuple[int, ...]:
        assert self.k is not None
        return (2, self.k)

    def frames_of(self, stacked: Any) -> Sequence[Any]:
        if isinstance(stacked, tuple) and len(stacked) == 2 and np.ndim(stacked[0]) == 4:
            ids, probs = stacked  # a stacked pair: (ids [T, k, h, w], probs [T, k, h, w])
            return [(ids[i], probs[i]) for i in range(len(ids))]
        return stacked

    def from_logits(self, logits: torch.Tensor) -> list[Any]:
        assert self.k is not None
        probs, ids = torch.softmax(logits.float(), dim=1).topk(self.k, dim=1)
        ids, probs = ids.to(torch.uint8).cpu().numpy(), probs.cpu().numpy()
        return [(ids[i], probs[i]) for i in range(len(ids))]

    def encode(self, value: Any, where: str) -> np.ndarray:
        assert self.k is not None
        if isinstance(value, tuple):
            ids, probs = (np.asarray(v) for v in value)
        else:
            full = np.asarray(value)
            if full.ndim != 3 or full.shape[0] != self.num_classes:
                raise PartMapError(f"{where}: give (ids, probs) pairs or [{self.num_classes}, h, w] probabilities, got shape {full.shape}")
            ids, probs = topk_from_probabilities(full, self.k)
        if ids.shape != probs.shape or ids.ndim != 3 or ids.shape[0] != self.k:
            raise PartMapError(f"{where}: top-k ids and probabilities must both be [{self.k}, h, w], got {ids.shape} and {probs.shape}")
        if (ids < 0).any() or (ids >= self.num_classes).any():
            raise PartMapError(f"{where}: top-k class id outside 0..{self.num_classes - 1}")
        return np.stack([ids.astype(np.uint8), quantise_topk(probs)])

    def decode(self, raw: np.ndarray) -> torch.Tensor:
        ids = torch.from_numpy(raw[:, 0].astype(np.int64))  # [T, k, h, w]
        probs = torch.from_numpy(raw[:, 1].astype(np.float32)) / 255.0
        out = torch.zeros((ids.shape[0], self.num_classes, *ids.shape[2:]), dtype=torch.float32)
        out.scatter_add_(1, ids, probs)
        return out.transpose(0, 1).contiguous()


class LogitsCodec(PartMapCodec):
    """``logits``: float16 ``[K, h, w]`` raw logits; read as ``softmax`` over ``K`` in float32 (no
    temperature: distillation applies its own). Values and from logits: float ``[K, h, w]``."""

    name = "logits"
    max_classes = None
    stored_dtype = np.float16

    def stored_lead(self) -> tuple[int, ...]:
        return (self.num_classes,)

    def from_logits(self, logits: torch.Tensor) -> list[Any]:
        return list(logits.float().cpu().numpy())

    def encode(self, value: Any, where: str) -> np.ndarray:
        logits = np.asarray(value, dtype=np.float32)
        if logits.ndim != 3 or logits.shape[0] != self.num_classes:
            raise PartMapError(f"{where}: logits must be [{self.num_classes}, h, w], got shape {logits.shape}")
        return logits.astype(np.float16)

    def decode(self, raw: np.ndarray) -> torch.Tensor:
        logits = torch.from_numpy(raw.astype(np.float32))  # [T, K, h, w]
        return torch.softmax(logits, dim=1).transpose(0, 1).contiguous()


#: The codec of each kind, by the kind's name (the ``kind`` a store's ``meta.json`` names).
CODECS: dict[str, type[PartMapCodec]] = {codec.name: codec for codec in (LabelsCodec, TopKCodec, LogitsCodec)}
KINDS = tuple(CODECS)


def codec_for(kind: str, num_classes: int, k: int | None = None) -> PartMapCodec:
    """The codec of ``kind`` for ``num_classes`` classes (and ``k``: :class:`TopKCodec` only)."""
    if kind not in CODECS:
        raise PartMapError(f"kind must be one of {', '.join(CODECS)}, got {kind!r}")
    return CODECS[kind](num_classes, k)


# --- writing ---------------------------------------------------------------------------------------
def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as a deterministic, per-member-compressed ``.npz`` atomically at ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh, zipfile.ZipFile(fh, "w", allowZip64=True) as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue(), compresslevel=6)


def _read_meta(root: Path) -> dict[str, Any]:
    path = root / _META
    if not path.is_file():
        raise PartMapError(f"part-map store {root}: no {_META} (not a part-map store, or never written)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PartMapError(f"part-map store {root}: cannot read {_META}: {exc}") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise PartMapError(
            f"part-map store {root}: {_META} is format {meta.get('format')!r} version "
            f"{meta.get('format_version')!r}; this reader needs {FORMAT!r} version {FORMAT_VERSION}"
        )
    if meta.get("kind") not in CODECS:
        raise PartMapError(f"part-map store {root}: unknown kind {meta.get('kind')!r} in {_META}")
    return meta


class PartMapWriter:
    """Writes one part-map store folder, one video at a time.

    Arguments:
        root: the store folder (created if needed).
        kind: a kind of :data:`CODECS`: ``"labels"``, ``"topk"`` or ``"logits"`` (see the module docstring).
        label_names: the K class names (at most 255 for labels/topk, since 255 means unknown).
        identity: JSON-serialisable dict naming the producer and everything the maps depend on.
        k: classes kept per pixel, required for ``topk`` (1 <= k <= K).
        resolution: ``(h, w)`` every map must have, or ``None`` if maps vary per video.
        scale: documented map-size / frame-size ratio when ``resolution`` is ``None`` (optional).

    If ``root`` already holds a store, its ``meta.json`` must agree on kind, labels, k, resolution,
    scale and identity (else :class:`PartMapError`), and writing resumes: :meth:`has_video` tells
    which videos are done.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        kind: str,
        label_names: Sequence[str],
        identity: Mapping[str, Any],
        k: int | None = None,
        resolution: tuple[int, int] | None = None,
        scale: float | None = None,
    ) -> None:
        self.root = Path(root)
        self.label_names = tuple(str(n) for n in label_names)
        self.codec = codec_for(kind, len(self.label_names), k)
        self.kind = kind
        self.k = self.codec.k
        self.resolution = None if resolution is None else (int(resolution[0]), int(resolution[1]))
        self.scale = None if scale is None else float(scale)
        self.identity = json.loads(_canonical(dict(identity)))  # proves it is JSON, normalises tuples
        self._videos = self.root / _VIDEOS
        self._videos.mkdir(parents=True, exist_ok=True)
        wanted = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "label_names": list(self.label_names),
            "k": self.k,
            "resolution": None if self.resolution is None else list(self.resolution),
            "scale": self.scale,
            "identity": self.identity,
        }
        meta_path = self.root / _META
        if meta_path.exists():
            existing = _read_meta(self.root)
            for key, value in wanted.items():
                if _canonical(existing.get(key)) != _canonical(value):
                    raise PartMapError(
                        f"part-map store {self.root}: {_META} has {key}={_canonical(existing.get(key))}, "
                        f"this writer has {_canonical(value)}; use another folder or delete this one"
                    )
        else:
            from hcframe_video import __version__

            wanted["created"] = {
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "host": socket.gethostname(),
                "hcframe_video": __version__,
            }
            write_json_atomic(meta_path, wanted, sort_keys=True)

    def path_of(self, video_id: str) -> Path:
        return self._videos / (safe_name(video_id) + ".npz")

    def has_video(self, video_id: str) -> bool:
        return self.path_of(video_id).is_file()

    def stored_frames(self, video_id: str) -> np.ndarray | None:
        """The frame numbers of ``video_id``'s file if it is a readable archive that lists a
        member for every one of them, else ``None`` (missing, truncated, not a zip, a member
        missing). Reads only the zip directory and ``frame_indices``, not the maps: what a
        resumed build checks before skipping a video."""
        path = self.path_of(video_id)
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                with archive.open(_FRAME_INDICES + ".npy") as fh:
                    frames = np.lib.format.read_array(fh, allow_pickle=False)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
            return None
        if frames.ndim != 1 or len(frames) == 0 or any(_frame_member(int(f)) + ".npy" not in names for f in frames):
            return None
        return frames.astype(np.int64)

    def write_video(
        self, video_id: str, frames: Mapping[int, Any] | np.ndarray | Sequence[Any]
    ) -> Path:
        """Write all maps of one video, replacing any previous file atomically.

        ``frames`` is either a dict ``{frame_index: map}`` (e.g. only every 4th frame) or a stacked
        array / sequence whose item ``i`` is frame ``i``. A map is, by kind:

        labels  integer ``[h, w]`` class ids (255 = unknown)
        topk    a pair ``(class_ids [k, h, w], probabilities [k, h, w])``, or full probabilities
                ``[K, h, w]`` from which the writer keeps the top k
        logits  float ``[K, h, w]`` (stored as float16)
        """
        if isinstance(frames, Mapping):
            items = sorted((int(f), m) for f, m in frames.items())
        else:
            items = list(enumerate(self.codec.frames_of(frames)))
        if not items:
            raise PartMapError(f"video {video_id!r}: no frames to write")
        if items[0][0] < 0:
            raise PartMapError(f"video {video_id!r}: frame indices must be >= 0, got {items[0][0]}")
        arrays: dict[str, np.ndarray] = {_FRAME_INDICES: np.array([f for f, _ in items], dtype=np.int64)}
        for frame, value in items:
            arrays[_frame_member(frame)] = self._encode(video_id, frame, value)
        path = self.path_of(video_id)
        _write_npz(path, arrays)
        return path

    def _check_size(self, video_id: str, frame: int, shape: tuple[int, ...]) -> None:
        if self.resolution is not None and tuple(shape[-2:]) != self.resolution:
            raise PartMapError(
                f"video {video_id!r} frame {frame}: map is {shape[-2]}x{shape[-1]}, the store's "
                f"resolution is {self.resolution[0]}x{self.resolution[1]}"
            )

    def check_video(self, video_id: str) -> str | None:
        """``None`` when ``video_id``'s file is complete and intact, else why not (``"missing"``
        when there is no file). Reads the whole file: every member must decompress to the CRC-32
        and size recorded when it was written, ``frame_indices`` must list frames that each have
        a map, and every map must have this store's type and shape."""
        path = self.path_of(video_id)
        if not path.is_file():
            return "missing"
        return _check_archive(path, self._map_shape)

    def _map_shape(self, array: np.ndarray) -> str | None:
        """Why ``array`` is not a map of this store, or None."""
        problem = self.codec.stored_problem(array)
        if problem is None and self.resolution is not None and tuple(array.shape[-2:]) != self.resolution:
            h, w = self.resolution
            problem = f"maps of {array.shape[-2]}x{array.shape[-1]}, the store's resolution is {h}x{w}"
        return problem

    def _encode(self, video_id: str, frame: int, value: Any) -> np.ndarray:
        stored = self.codec.encode(value, f"video {video_id!r} frame {frame}")
        self._check_size(video_id, frame, stored.shape)
        return stored


def _check_archive(path: Path, map_problem: Any) -> str | None:
    """Why the video file ``path`` cannot be trusted, or None (see :meth:`PartMapWriter.check_video`)."""
    try:
        with zipfile.ZipFile(path) as archive:
            arrays: dict[str, np.ndarray] = {}
            for info in archive.infolist():
                with archive.open(info) as member:
                    arrays[info.filename] = np.lib.format.read_array(member, allow_pickle=False)
                    member.read()  # to the end: zipfile compares the CRC-32 there
    except _READ_ERRORS as exc:
        return f"damaged or not a part-map file ({type(exc).__name__}: {exc})"
    frames = arrays.get(_FRAME_INDICES + ".npy")
    if frames is None or frames.dtype != np.int64 or frames.ndim != 1 or len(frames) == 0:
        return f"no valid {_FRAME_INDICES}"
    for frame in frames:
        array = arrays.get(_frame_member(int(frame)) + ".npy")
        if array is None:
            return f"frame {int(frame)} is listed but has no map"
        problem = map_problem(array)
        if problem is not None:
            return f"frame {int(frame)}: {problem}"
    return None


# --- reading ---------------------------------------------------------------------------------------
class PartMapStore(TargetStore):
    """Reads a part-map store folder; the :class:`hcframe.TargetStore` for teacher caches and
    synthetic ground truth.

    Arguments:
        root: the store folder.
        expected_identity: if given, must equal ``meta.json``'s identity, else :class:`PartMapError`
            (the cache was made by another teacher / generator: rebuild it).

    Attributes: ``kind``, ``label_names``, ``num_classes``, ``k``, ``resolution``, ``identity``,
    ``meta``. Safe to pickle into DataLoader workers (no open files are kept).
    """

    def __init__(self, root: str | os.PathLike[str], expected_identity: Mapping[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.meta = _read_meta(self.root)
        self.kind: str = self.meta["kind"]
        self.label_names = tuple(self.meta["label_names"])
        try:
            self.codec = codec_for(self.kind, len(self.label_names), self.meta.get("k"))
        except PartMapError as exc:
            raise PartMapError(f"part-map store {self.root}: {_META}: {exc}") from None
        self.k: int | None = self.codec.k
        res = self.meta.get("resolution")
        self.resolution: tuple[int, int] | None = None if res is None else (int(res[0]), int(res[1]))
        self.identity: dict[str, Any] = self.meta.get("identity", {})
        if expected_identity is not None and _canonical(dict(expected_identity)) != _canonical(self.identity):
            raise PartMapError(
                f"part-map store {self.root} is stale: meta.json identity {_canonical(self.identity)} "
                f"!= expected {_canonical(dict(expected_identity))}; delete the folder to rebuild it"
            )
        self._frame_cache: OrderedDict[str, np.ndarray] = OrderedDict()

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_frame_cache"] = OrderedDict()
        return state

    def path_of(self, video_id: str) -> Path:
        return self.root / _VIDEOS / (safe_name(video_id) + ".npz")

    def has_video(self, video_id: str) -> bool:
        return self.path_of(video_id).is_file()

    def video_ids(self) -> list[str]:
        """Ids of all stored videos (decoded from the file names), sorted."""
        from urllib.parse import unquote_to_bytes

        folder = self.root / _VIDEOS
        names = sorted(p.name[:-4] for p in folder.glob("*.npz") if not p.name.startswith(".tmp-"))
        return [unquote_to_bytes(n).decode("utf-8") for n in names]

    def _open(self, video_id: str) -> Any:
        path = self.path_of(video_id)
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise PartMapError(
                f"part-map store {self.root} has no video {video_id!r} (expected {path}); "
                "build the cache for this dataset first"
            ) from None
        except _READ_ERRORS as exc:
            raise self._unreadable(path, exc) from None

    def _unreadable(self, path: Path, exc: BaseException) -> PartMapError:
        return PartMapError(
            f"part-map store {self.root}: cannot read {path} ({type(exc).__name__}: {exc}); "
            f"it is damaged or not a part-map file: make it again (for a teacher cache, rerun `hcframe cache-teacher`)"
        )

    def frame_indices(self, video_id: str) -> np.ndarray:
        """The frame numbers stored for ``video_id`` (ascending int64)."""
        cached = self._frame_cache.get(video_id)
        if cached is None:
            with self._open(video_id) as archive:
                try:
                    cached = archive[_FRAME_INDICES]
                except _READ_ERRORS as exc:
                    raise self._unreadable(self.path_of(video_id), exc) from None
            if cached.dtype.kind not in "iu" or cached.ndim != 1 or len(cached) == 0:
                raise self._unreadable(self.path_of(video_id), ValueError(f"{_FRAME_INDICES} is {cached.dtype} {list(cached.shape)}"))
            self._frame_cache[video_id] = cached
            if len(self._frame_cache) > 4096:
                self._frame_cache.popitem(last=False)
        return cached

    def nearest_stored(self, video_id: str, frame_indices: Iterable[int]) -> np.ndarray:
        """For each requested frame, the nearest stored frame (ties: the earlier one)."""
        stored = self.frame_indices(video_id)
        wanted = np.asarray(list(frame_indices), dtype=np.int64)
        pos = np.clip(np.searchsorted(stored, wanted), 1, max(len(stored) - 1, 1))
        if len(stored) == 1:
            return np.repeat(stored, len(wanted))
        before, after = stored[pos - 1], stored[pos]
        return np.where(wanted - before <= after - wanted, before, after)

    def read_raw(self, video_id: str, frame_indices: Sequence[int]) -> np.ndarray:
        """The stored arrays for the (nearest stored) frames, stacked on a new first axis:
        labels uint8 ``[T, h, w]``, topk uint8 ``[T, 2, k, h, w]``, logits float16 ``[T, K, h, w]``."""
        frames = self.nearest_stored(video_id, frame_indices)
        with self._open(video_id) as archive:
            decoded: dict[int, np.ndarray] = {}
            try:
                for f in np.unique(frames):
                    decoded[int(f)] = archive[_frame_member(int(f))]
                return np.stack([decoded[int(f)] for f in frames])
            except _READ_ERRORS as exc:
                raise self._unreadable(self.path_of(video_id), exc) from None

    def read(self, video_id: str, frame_indices: Sequence[int]) -> torch.Tensor:
        """float32 ``[K, T, h, w]`` probabilities (see the module docstring for each kind)."""
        return self.codec.decode(self.read_raw(video_id, frame_indices))
