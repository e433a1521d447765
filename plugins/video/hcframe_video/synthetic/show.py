"""Contact sheets: a few clips' frames with their part maps overlaid, as a PNG (or animated GIF)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import attrs
import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hcframe_video.partmaps import LIP_LABELS, UNKNOWN

__all__ = ["ClipToShow", "LIP_PALETTE", "clips_from_dataset", "clips_from_world", "colour_labels", "contact_sheet"]

#: One RGB colour per LIP label (index order); background black.
LIP_PALETTE = np.array([
    (0, 0, 0), (128, 0, 0), (255, 0, 0), (0, 85, 0), (170, 0, 51), (255, 85, 0), (0, 0, 85), (0, 119, 221),
    (85, 85, 0), (0, 85, 85), (85, 51, 0), (52, 86, 128), (0, 128, 0), (0, 0, 255), (51, 170, 221),
    (0, 255, 255), (85, 255, 170), (170, 255, 85), (255, 255, 0), (255, 170, 0),
], dtype=np.uint8)  # fmt: skip
UNKNOWN_COLOUR = np.array((128, 128, 128), dtype=np.uint8)


@attrs.frozen
class ClipToShow:
    """Frames uint8 ``[T, H, W, 3]``, part labels ``[T, h, w]`` (or None), and a caption."""

    frames: np.ndarray
    labels: np.ndarray | None
    caption: str


def colour_labels(labels: np.ndarray, palette: np.ndarray = LIP_PALETTE) -> np.ndarray:
    """``[..., h, w]`` label ids -> ``[..., h, w, 3]`` colours (unknown 255 grey; other ids past the
    palette wrap around it)."""
    labels = np.asarray(labels).astype(np.int64)
    out = palette[labels % len(palette)]
    out[labels == UNKNOWN] = UNKNOWN_COLOUR
    return out


def _nearest_resize(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of ``[T, h, w]`` to ``[T, height, width]``."""
    h, w = labels.shape[-2:]
    rows = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(np.int64)
    cols = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(np.int64)
    return labels[:, rows][:, :, cols]


def _overlay(frames: np.ndarray, labels: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend label colours over the frames; background (0) stays as it is."""
    labels = _nearest_resize(labels, frames.shape[1], frames.shape[2])
    colours = colour_labels(labels).astype(np.float32)
    blend = (1 - alpha) * frames.astype(np.float32) + alpha * colours
    out = np.where((labels != 0)[..., None], blend, frames.astype(np.float32))
    return np.round(out).astype(np.uint8)


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


def _legend(label_ids: Sequence[int], width: int, names: Sequence[str]) -> Image.Image:
    font = _font()
    swatch, pad, row_h = 12, 6, 16
    items = [(int(k), names[k] if k < len(names) else str(k)) for k in label_ids]
    x, y, positions = pad, pad, []
    for k, name in items:
        w = swatch + 4 + int(font.getlength(name)) + 12
        if x + w > width and x > pad:
            x, y = pad, y + row_h
        positions.append((x, y, k, name))
        x += w
    image = Image.new("RGB", (width, y + row_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for x, y, k, name in positions:
        draw.rectangle([x, y, x + swatch, y + swatch], fill=tuple(int(c) for c in LIP_PALETTE[k % len(LIP_PALETTE)]), outline=(0, 0, 0))
        draw.text((x + swatch + 4, y), name, fill=(0, 0, 0), font=font)
    return image


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
    font = _font()
    gap, caption_h = 4, 14

    def up(image: np.ndarray) -> np.ndarray:
        return image.repeat(scale, axis=0).repeat(scale, axis=1)

    if out.suffix.lower() == ".gif":
        length = max(len(c.frames) for c in clips)
        cell_w = 2 * w * scale + gap
        width = len(clips) * (cell_w + gap) + gap
        legend = _legend(present, width, label_names)
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
                    over = _overlay(clip.frames[k : k + 1], clip.labels[min(k, len(clip.labels) - 1)][None])[0]
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
                over = _overlay(clip.frames[k : k + 1], clip.labels[min(k, len(clip.labels) - 1)][None])[0]
                block.paste(Image.fromarray(up(over)), (x, caption_h + h * scale + gap))
        rows.append(block)
    legend = _legend(present, width, label_names)
    sheet = Image.new("RGB", (width, sum(r.height for r in rows) + legend.height + gap), (255, 255, 255))
    y = 0
    for block in rows:
        sheet.paste(block, (0, y))
        y += block.height
    sheet.paste(legend, (0, y + gap))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
