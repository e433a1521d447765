"""Contact sheets: a few clips' frames with their part maps overlaid, as a PNG (or animated GIF),
and, for a recipe whose tasks draw part maps, the ground truth, the teacher and the student side
by side (:func:`comparison_sheet`).

Colours, overlay and legend are the core's (:mod:`hcframe.visualise`: SCHP's palette).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import attrs
import av
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from hcframe.visualise import legend_strip, overlay, schp_palette

from hcframe_video.partmaps import LIP_LABELS, UNKNOWN

__all__ = ["ClipToShow", "clips_from_dataset", "clips_from_world", "comparison_sheet", "contact_sheet"]


@attrs.frozen
class ClipToShow:
    """Frames uint8 ``[T, H, W, 3]``, part labels ``[T, h, w]`` (or None), and a caption."""

    frames: np.ndarray
    labels: np.ndarray | None
    caption: str


def _overlay(frames: np.ndarray, labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return overlay(frames, labels, palette)


def clips_from_world(root: str | Path, num_clips: int = 6, subset: str = "train") -> list[ClipToShow]:
    """The first ``num_clips`` videos of a world folder (one per action when there are enough),
    decoded from their files, with their ground-truth part maps."""
    from hcframe_video.partmaps import PartMapStore
    from hcframe_video.synthetic.generate import PARTS_DIR, read_world_spec, video_path
    from hcframe_video.synthetic.world import ACTION_NAMES

    root = Path(root)
    spec = read_world_spec(root)
    store = PartMapStore(root / PARTS_DIR, expected_identity=spec.parts_identity())
    count = spec.count(subset)
    out = []
    for index in range(min(num_clips, count)):
        rel = video_path(subset, index)
        with av.open(str(root / rel)) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        labels = store.read_raw(rel, range(len(frames)))
        out.append(ClipToShow(frames, labels, f"{ACTION_NAMES[index % len(ACTION_NAMES)]}  {rel}"))
    return out


def clips_from_dataset(dataset, num_clips: int = 6) -> list[ClipToShow]:
    """One view of ``num_clips`` videos spread over a dataset, as the engine would load them; part
    maps from ``dataset.ground_truth_parts()`` when the dataset has one (else from its
    ``target_store``, else none)."""
    getter = getattr(dataset, "ground_truth_parts", None)
    if getter is not None:
        dataset.target_store = getter()
    dataset.num_views = 1
    n = len(dataset)
    indices = sorted({int(k * n / num_clips) for k in range(min(num_clips, n))})
    out = []
    for index in indices:
        sample = dataset[index]
        if not isinstance(sample, dict):  # hcframe.BadVideo
            continue
        frames = sample["views"][0].permute(1, 2, 3, 0).numpy()  # [T, H, W, 3]
        labels = None
        if "parts" in sample:
            parts = sample["parts"][0].float()  # [K, T, h, w]
            labels = parts.argmax(0).numpy().astype(np.uint8)
            labels[parts.sum(0).numpy() < 0.5] = UNKNOWN
        label = int(sample["label"])
        name = dataset.class_names[label] if 0 <= label < len(dataset.class_names) else "unlabelled"
        out.append(ClipToShow(frames, labels, f"{name}  {dataset.video_id(index)}"))
    return out


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _legend(label_ids: Sequence[int], width: int, names: Sequence[str], palette: np.ndarray) -> Image.Image:
    return Image.fromarray(legend_strip([int(k) for k in label_ids if int(k) != 0], names, width, palette))


def contact_sheet(clips: Sequence[ClipToShow], out: str | Path, max_frames: int = 8, scale: int = 0,
                  label_names: Sequence[str] = LIP_LABELS) -> Path:
    """Write a contact sheet of ``clips``: per clip a caption, a row of up to ``max_frames`` frames
    (evenly spaced) and below it the same frames with the part map overlaid; a colour legend of
    the labels present at the bottom. ``.gif`` output animates every frame instead (one column
    pair per clip: frames | overlay). ``scale`` 0 enlarges small frames to >= 96 px."""
    if not clips:
        raise ValueError("no clips to show (empty dataset, or every video failed to decode)")
    out = Path(out)
    h, w = clips[0].frames.shape[1:3]
    scale = scale or max(1, -(-96 // min(h, w)))
    present = sorted({int(v) for c in clips if c.labels is not None for v in np.unique(c.labels) if v != UNKNOWN})
    palette = schp_palette(len(label_names))
    font = _font()
    gap, caption_h = 4, 14

    def up(image: np.ndarray) -> np.ndarray:
        return image.repeat(scale, axis=0).repeat(scale, axis=1)

    if out.suffix.lower() == ".gif":
        length = max(len(c.frames) for c in clips)
        cell_w = 2 * w * scale + gap
        width = len(clips) * (cell_w + gap) + gap
        legend = _legend(present, width, label_names, palette)
        pages = []
        for t in range(length):
            page = Image.new("RGB", (width, caption_h + h * scale + 2 * gap + legend.height), (255, 255, 255))
            draw = ImageDraw.Draw(page)
            for c_i, clip in enumerate(clips):
                k = min(t, len(clip.frames) - 1)
                x = gap + c_i * (cell_w + gap)
                draw.text((x, 1), clip.caption.split()[0], fill=(0, 0, 0), font=font)
                page.paste(Image.fromarray(up(clip.frames[k])), (x, caption_h))
                if clip.labels is not None:
                    over = _overlay(clip.frames[k : k + 1], clip.labels[min(k, len(clip.labels) - 1)][None], palette)[0]
                    page.paste(Image.fromarray(up(over)), (x + w * scale + gap, caption_h))
            page.paste(legend, (0, caption_h + h * scale + 2 * gap))
            pages.append(page)
        out.parent.mkdir(parents=True, exist_ok=True)
        pages[0].save(out, save_all=True, append_images=pages[1:], duration=125, loop=0)
        return out

    columns = min(max_frames, max(len(c.frames) for c in clips))
    width = gap + columns * (w * scale + gap)
    width = max(width, 320)
    rows: list[Image.Image] = []
    for clip in clips:
        picks = np.unique(np.linspace(0, len(clip.frames) - 1, min(columns, len(clip.frames))).round().astype(int))
        n_rows = 2 if clip.labels is not None else 1
        block = Image.new("RGB", (width, caption_h + n_rows * (h * scale + gap)), (255, 255, 255))
        ImageDraw.Draw(block).text((gap, 1), clip.caption, fill=(0, 0, 0), font=font)
        for j, k in enumerate(picks):
            x = gap + j * (w * scale + gap)
            block.paste(Image.fromarray(up(clip.frames[k])), (x, caption_h))
            if clip.labels is not None:
                over = _overlay(clip.frames[k : k + 1], clip.labels[min(k, len(clip.labels) - 1)][None], palette)[0]
                block.paste(Image.fromarray(up(over)), (x, caption_h + h * scale + gap))
        rows.append(block)
    legend = _legend(present, width, label_names, palette)
    sheet = Image.new("RGB", (width, sum(r.height for r in rows) + legend.height + gap), (255, 255, 255))
    y = 0
    for block in rows:
        sheet.paste(block, (0, y))
        y += block.height
    sheet.paste(legend, (0, y + gap))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


# --- ground truth, teacher and student side by side --------------------------------------------
def _middle_labels(parts: "torch.Tensor") -> np.ndarray:
    """Transformed part probabilities ``[B, K, T, h, w]`` -> labels ``[B, h, w]`` of the middle
    frame (255 where no class has mass)."""
    mid = parts[:, :, parts.shape[2] // 2].float()
    labels = mid.argmax(dim=1).to(torch.uint8)
    labels[mid.sum(dim=1) < 0.5] = UNKNOWN
    return labels.numpy()


def comparison_sheet(recipe, out: str | Path, num_clips: int = 4, checkpoint: str | Path | None = None) -> tuple[Path, int]:
    """For ``num_clips`` videos spread over the recipe's dataset, as the engine loads and
    transforms them (the deterministic evaluation transform): the middle frame, the dataset's
    ground-truth part maps (when it has them), and what each task that draws part maps shows
    (:meth:`hcframe.PretextTask.visualise`: the parsing task's teacher, cached or run online, and
    its student). The student is the model of ``checkpoint``; without one it is left out (a
    random initialisation predicts nothing). Writes a PNG; returns it and the number of clips."""
    from hcframe.data import BadVideo, collate
    from hcframe.engine.trainer import build_model
    from hcframe.evaluation.runner import load_model_weights
    from hcframe.visualise import label_map_grid, stack_images
    from hcframe import LabelMaps

    model = build_model(recipe)
    if checkpoint is not None:
        load_model_weights(model, Path(checkpoint), recipe)
    if not model.can_visualise():
        raise ValueError(f"{recipe.source}: no task of the recipe draws part maps (e.g. parsing_distill); show its dataset without --checkpoint")
    dataset = recipe.build_dataset()
    dataset.num_views = model.num_views
    for task in model.tasks.values():
        if "parts" in task.needs:
            dataset.target_store = task.target_store(dataset)
    transform = recipe.transform.build()
    n = len(dataset)
    indices = sorted({int(k * n / num_clips) for k in range(min(num_clips, n))})
    samples = [(i, dataset[(i, 0)]) for i in indices]
    good = [(i, s) for i, s in samples if not isinstance(s, BadVideo)]
    if not good:
        raise ValueError("every video picked failed to decode")
    batch = transform(collate([s for _, s in good]), train=False)
    shown = model.visualise(batch, max_clips=len(good))
    ground_truth = None
    getter = getattr(dataset, "ground_truth_parts", None)
    if getter is not None:  # the same clips again, with the world's own part maps
        dataset.target_store = getter()
        truth = transform(collate([dataset[(i, 0)] for i, _ in good]), train=False)
        ground_truth = _middle_labels(truth["parts"][0])
    captions = []
    for i, sample in good:
        label = int(sample["label"])
        name = dataset.class_names[label] if 0 <= label < len(getattr(dataset, "class_names", ())) else ""
        captions.append(name or dataset.video_id(i))
    grids = []
    for task, maps in shown.items():
        sources = dict(maps.maps)
        if checkpoint is None:
            sources.pop("student", None)
        if ground_truth is not None and "ground truth" not in sources:
            sources = {"ground truth": torch.from_numpy(ground_truth), **sources}
        grids.append(label_map_grid(LabelMaps(maps.frames, sources, maps.label_names, captions), title=f"task {task}"))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stack_images(grids, gap=8)).save(out)
    return out, len(good)
