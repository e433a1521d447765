"""The real benchmarks and a user's own videos, as :class:`~hcframe_video.clips.VideoClipDataset`s.

Every dataset here takes how clips are cut as one argument, ``clips``
(:class:`~hcframe_video.clips.ClipSampling`; a nested ``[data.clips]`` table in a recipe), and hands
it to :class:`VideoClipDataset` unchanged. Pre-training ignores the labels; evaluation uses the
same objects with ``subset`` and ``mode`` chosen accordingly.

Prepared copies
    ``hcframe prepare`` may change a file's extension (``.avi`` -> ``.mp4``). A split file that names
    ``a/b.avi`` is satisfied by ``a/b.avi`` or, failing that, by ``a/b`` with any of
    :data:`VIDEO_EXTENSIONS` (``.mp4`` first). ``video_id(i)`` is the path of the file found.
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from typing import Iterable, Sequence

from hcframe_video.clips import ClipSampling, VideoClipDataset
from hcframe_video.decode import VIDEO_EXTENSIONS

__all__ = [
    "HMDB51",
    "UCF101",
    "VIDEO_EXTENSIONS",
    "Kinetics",
    "VideoFolder",
    "VideoList",
    "find_video",
]

log = logging.getLogger(__name__)


SUBSETS = ("train", "test")


def find_video(root: str, relative: str) -> str | None:
    """The path (relative to ``root``) of the listed video ``relative`` or of its prepared copy
    with another extension; ``None`` when neither exists."""
    if os.path.isfile(os.path.join(root, relative)):
        return relative
    stem, _ = os.path.splitext(relative)
    for ext in VIDEO_EXTENSIONS:
        candidate = stem + ext
        if os.path.isfile(os.path.join(root, candidate)):
            return candidate
    return None


def _require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: {what} not found (expected a folder)")
    return path


def _require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: {what} not found")
    return path


def _annotation_folder(root: str, given: str, default_name: str, what: str) -> str:
    """``given``; empty: ``<root>/<default_name>`` if that folder exists, else ``root``. Checked."""
    if not given:
        default = os.path.join(root, default_name)
        given = default if os.path.isdir(default) else root
    return _require_dir(os.path.abspath(given), what)


def _check_split(split: int) -> int:
    if isinstance(split, bool) or split not in (1, 2, 3):
        raise ValueError(f"split: expected 1, 2 or 3, got {split!r}")
    return split


def _check_subset(subset: str) -> str:
    if subset not in SUBSETS:
        raise ValueError(f"subset: expected one of {', '.join(SUBSETS)}, got {subset!r}")
    return subset


def _resolve_all(root: str, listed: Sequence[str], source: str) -> list[str]:
    """Find every listed video; a missing one is an error naming the first and the count."""
    found, missing = [], []
    for rel in listed:
        path = find_video(root, rel)
        if path is None:
            missing.append(rel)
        else:
            found.append(path)
    if missing:
        raise FileNotFoundError(
            f"{os.path.join(root, missing[0])}: listed in {source} but not found ({len(missing)} of {len(listed)} "
            f"listed videos are missing; is root the folder that holds the class folders?)"
        )
    return found


class UCF101(VideoClipDataset):
    """UCF101 in its official layout: ``<root>/<ClassName>/v_<ClassName>_gXX_cYY.avi``.

    ``annotations`` is the folder with ``classInd.txt``, ``trainlist0{1,2,3}.txt`` (path and 1-based
    label) and ``testlist0{1,2,3}.txt`` (path only; the label comes from the class folder);
    empty: ``<root>/ucfTrainTestlist`` if it exists, else ``<root>``. ``split`` 1-3, ``subset``
    ``"train"`` or ``"test"``. Class indices follow ``classInd.txt`` (0-based). Other arguments:
    :class:`~hcframe_video.clips.VideoClipDataset`.
    """

    def __init__(
        self,
        root: str,
        annotations: str = "",
        split: int = 1,
        subset: str = "train",
        *,
        clips: ClipSampling = ClipSampling(),
    ) -> None:
        root = _require_dir(os.path.abspath(root), "UCF101 root")
        split, subset = _check_split(split), _check_subset(subset)
        annotations = _annotation_folder(root, annotations, "ucfTrainTestlist", "UCF101 annotations folder")
        class_file = _require_file(os.path.join(annotations, "classInd.txt"), "UCF101 classInd.txt (lines '<1-based index> <ClassName>')")
        class_names = self._read_class_index(class_file)
        by_lower = {name.lower(): k for k, name in enumerate(class_names)}
        list_file = _require_file(
            os.path.join(annotations, f"{subset}list{split:02d}.txt"), f"UCF101 {subset} list for split {split}"
        )
        listed, labels = [], []
        for line_no, parts in _lines(list_file):
            rel = parts[0]
            folder = rel.replace("\\", "/").split("/")[0].lower()
            if len(parts) >= 2:
                label = _parse_int(parts[1], list_file, line_no) - 1
            elif folder in by_lower:
                label = by_lower[folder]
            else:
                raise ValueError(f"{list_file}:{line_no}: class folder {folder!r} of {rel} is not in classInd.txt")
            if not 0 <= label < len(class_names):
                raise ValueError(f"{list_file}:{line_no}: label {label + 1} is outside 1..{len(class_names)} of classInd.txt")
            listed.append(rel)
            labels.append(label)
        paths = _resolve_all(root, listed, list_file)
        super().__init__(paths, labels, class_names, root, clips=clips)
        self.split, self.subset = split, subset

    @staticmethod
    def _read_class_index(path: str) -> list[str]:
        entries = {}
        for line_no, parts in _lines(path):
            if len(parts) != 2:
                raise ValueError(f"{path}:{line_no}: expected '<index> <ClassName>', got {' '.join(parts)!r}")
            entries[_parse_int(parts[0], path, line_no)] = parts[1]
        if sorted(entries) != list(range(1, len(entries) + 1)):
            raise ValueError(f"{path}: class indices must be 1..{len(entries)} without gaps")
        return [entries[k] for k in range(1, len(entries) + 1)]


class HMDB51(VideoClipDataset):
    """HMDB51: ``<root>/<class>/<name>.avi`` with the official split files
    ``<class>_test_split{1,2,3}.txt`` in ``splits`` (lines ``<name>.avi <tag>``, tag 1 = train,
    2 = test, 0 = unused). ``splits`` empty: ``<root>/testTrainMulti_7030_splits`` if it exists,
    else ``<root>``. Classes are the split files' class names, sorted. Other arguments:
    :class:`~hcframe_video.clips.VideoClipDataset`.
    """

    def __init__(
        self,
        root: str,
        splits: str = "",
        split: int = 1,
        subset: str = "train",
        *,
        clips: ClipSampling = ClipSampling(),
    ) -> None:
        root = _require_dir(os.path.abspath(root), "HMDB51 root")
        split, subset = _check_split(split), _check_subset(subset)
        splits = _annotation_folder(root, splits, "testTrainMulti_7030_splits", "HMDB51 split-file folder")
        suffix = f"_test_split{split}.txt"
        split_files = sorted(f for f in os.listdir(splits) if f.endswith(suffix))
        if not split_files:
            raise FileNotFoundError(f"{splits}: no HMDB51 split files '<class>{suffix}' found")
        class_names = [f[: -len(suffix)] for f in split_files]
        wanted_tag = "1" if subset == "train" else "2"
        listed, labels = [], []
        for label, (name, file_name) in enumerate(zip(class_names, split_files)):
            path = os.path.join(splits, file_name)
            for line_no, parts in _lines(path):
                if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                    raise ValueError(f"{path}:{line_no}: expected '<video name> <0|1|2>', got {' '.join(parts)!r}")
                if parts[1] == wanted_tag:
                    listed.append(f"{name}/{parts[0]}")
                    labels.append(label)
        paths = _resolve_all(root, listed, f"{splits}/*{suffix}")
        super().__init__(paths, labels, class_names, root, clips=clips)
        self.split, self.subset = split, subset


class Kinetics(VideoClipDataset):
    """Kinetics-400/600/700 (the variants differ only in their CSV).

    ``csv_file`` has the columns ``label,youtube_id,time_start,time_end,split`` (``label`` may be
    absent for an unlabelled test set: labels are then -1). Rows whose ``split`` equals ``subset``
    are used (``subset`` empty: all rows; the official values are ``train``, ``val``/``validate``,
    ``test``). Files are ``<youtube_id>_<start:06d>_<end:06d>.mp4`` anywhere under ``root``
    (flat, or in per-class folders), any extension of :data:`VIDEO_EXTENSIONS`. Class indices are
    the sorted distinct labels of the whole CSV, so all subsets agree. Videos missing on disk are
    counted and reported once with a warning, and skipped; none found at all is an error.
    """

    def __init__(
        self,
        root: str,
        csv_file: str,
        subset: str = "train",
        *,
        clips: ClipSampling = ClipSampling(),
    ) -> None:
        root = _require_dir(os.path.abspath(root), "Kinetics root")
        csv_file = _require_file(os.path.abspath(csv_file), "Kinetics annotation CSV")
        with open(csv_file, newline="") as handle:
            reader = csv.DictReader(handle)
            needed = {"youtube_id", "time_start", "time_end"}
            if reader.fieldnames is None or not needed <= set(reader.fieldnames):
                raise ValueError(
                    f"{csv_file}: expected the columns label,youtube_id,time_start,time_end,split; got {reader.fieldnames}"
                )
            rows = list(reader)
        has_labels = "label" in (reader.fieldnames or [])
        class_names = sorted({r["label"] for r in rows}) if has_labels else []
        index_of = {name: k for k, name in enumerate(class_names)}
        if subset and "split" in (reader.fieldnames or []):
            rows = [r for r in rows if r["split"] == subset]
            if not rows:
                raise ValueError(f"{csv_file}: no rows with split == {subset!r}")
        on_disk = _index_by_stem(root)
        paths, labels, missing = [], [], []
        for line_no, row in enumerate(rows, start=2):
            try:
                stem = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
            except ValueError:
                raise ValueError(f"{csv_file}:{line_no}: time_start/time_end must be numbers, got {row}") from None
            found = on_disk.get(stem)
            if found is None:
                missing.append(stem)
                continue
            paths.append(found)
            labels.append(index_of[row["label"]] if has_labels else -1)
        if not paths:
            raise FileNotFoundError(
                f"{root}: none of the {len(rows)} videos listed in {csv_file} were found "
                f"(expected files named <youtube_id>_<start:06d>_<end:06d>.mp4, flat or in class folders)"
            )
        self.missing = missing
        if missing:
            message = (
                f"Kinetics {csv_file}: {len(missing)} of {len(rows)} listed videos are missing under {root} "
                f"and are skipped (first: {missing[0]}.mp4)"
            )
            log.warning(message)
            warnings.warn(message, stacklevel=2)
        super().__init__(paths, labels, class_names, root, clips=clips)
        self.subset = subset


class VideoFolder(VideoClipDataset):
    """A user's videos, one sub-folder per class: ``<root>/<class>/<any path>.<ext>``.

    Classes are the names of the sub-folders that hold videos, sorted; videos are found recursively inside each class
    folder by extension (``extensions``, default :data:`VIDEO_EXTENSIONS`), sorted by path.
    Other arguments: :class:`~hcframe_video.clips.VideoClipDataset`.
    """

    def __init__(
        self,
        root: str,
        extensions: list[str] = list(VIDEO_EXTENSIONS),
        *,
        clips: ClipSampling = ClipSampling(),
    ) -> None:
        root = _require_dir(os.path.abspath(root), "video folder root")
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
        if not folders:
            raise FileNotFoundError(f"{root}: no class sub-folders found (expected <root>/<class>/<video>)")
        found = {name: sorted(_walk_videos(os.path.join(root, name), exts)) for name in folders}
        # Sub-folders without videos (annotation folders, say) are not classes.
        class_names = [name for name in folders if found[name]]
        if not class_names:
            raise FileNotFoundError(f"{root}: no videos with extensions {', '.join(exts)} in its class folders")
        paths, labels = [], []
        for label, name in enumerate(class_names):
            for rel in found[name]:
                paths.append(f"{name}/{rel}")
                labels.append(label)
        super().__init__(paths, labels, class_names, root, clips=clips)


class VideoList(VideoClipDataset):
    """Videos named in a text file, one per line: ``<path> [<label>]`` (``#`` starts a comment).

    Paths are relative to ``root`` (empty: the list file's folder). Either every line has an
    integer label (0-based) or none has (labels are then -1). ``class_names`` names the labels
    (empty: ``"0"``, ``"1"``, ... up to the largest label). Missing files are an error. Other
    arguments: :class:`~hcframe_video.clips.VideoClipDataset`.
    """

    def __init__(
        self,
        list_file: str,
        root: str = "",
        class_names: list[str] = [],
        *,
        clips: ClipSampling = ClipSampling(),
    ) -> None:
        list_file = _require_file(os.path.abspath(list_file), "video list file ('<path> [<label>]' per line)")
        root = _require_dir(os.path.abspath(root) if root else os.path.dirname(list_file), "video list root")
        listed, labels = [], []
        for line_no, parts in _lines(list_file):
            if len(parts) > 2:
                raise ValueError(f"{list_file}:{line_no}: expected '<path> [<label>]', got {' '.join(parts)!r}")
            listed.append(parts[0])
            labels.append(_parse_int(parts[1], list_file, line_no) if len(parts) == 2 else None)
        if not listed:
            raise ValueError(f"{list_file}: the list names no videos")
        labelled = [label is not None for label in labels]
        if any(labelled) and not all(labelled):
            first = labelled.index(False) if labelled[0] else labelled.index(True)
            raise ValueError(f"{list_file}: line for {listed[first]} differs: give a label on every line or on none")
        if all(labelled):
            names = list(class_names) or [str(k) for k in range(max(labels) + 1)]
        else:
            labels = [-1] * len(listed)
            names = list(class_names)
        paths = _resolve_all(root, listed, list_file)
        super().__init__(paths, labels, names, root, clips=clips)


# --- helpers -------------------------------------------------------------------------------------
def _lines(path: str) -> Iterable[tuple[int, list[str]]]:
    """Non-empty, non-comment lines of a text file, split on whitespace, with 1-based numbers."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, start=1):
            text = line.split("#", 1)[0].strip()
            if text:
                yield line_no, text.split()


def _parse_int(text: str, path: str, line_no: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path}:{line_no}: expected an integer, got {text!r}") from None


def _walk_videos(folder: str, exts: tuple[str, ...]) -> Iterable[str]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if os.path.splitext(name)[1].lower() in exts and not name.startswith("."):
                yield os.path.relpath(os.path.join(dirpath, name), folder).replace(os.sep, "/")


def _index_by_stem(root: str) -> dict[str, str]:
    """``{file stem: path relative to root}`` for every video under ``root`` (first by sorted path,
    preferring :data:`VIDEO_EXTENSIONS` order for the same stem)."""
    index: dict[str, tuple[int, str]] = {}
    rank = {ext: k for k, ext in enumerate(VIDEO_EXTENSIONS)}
    for rel in sorted(_walk_videos(root, VIDEO_EXTENSIONS)):
        stem, ext = os.path.splitext(os.path.basename(rel))
        key = (rank[ext.lower()], rel)
        if stem not in index or key < index[stem]:
            index[stem] = key
    return {stem: rel for stem, (_, rel) in index.items()}
