"""Drawing part maps over frames: the images of the ``tensorboard`` and ``wandb`` loggers and of
``hcframe show``.

A task that has per-pixel classes to show returns :class:`hcframe.LabelMaps` from
:meth:`hcframe.PretextTask.visualise`; :func:`label_map_grid` draws it as one RGB image: a row of
frames, then one row per source (``teacher``, ``student``, ...) with that source's classes
blended over the same frames, the source's name at the left of its row, and a legend of the
classes that appear.

Colours are those SCHP (Self-Correction for Human Parsing) gives its LIP, ATR and Pascal-Person
outputs: the PASCAL VOC colour map, where the bits of the class id are spread over the high bits
of red, green and blue (:func:`schp_palette`). Class 0 is the background: it is not painted and
not in the legend. Pixels without a class (255) are drawn in VOC's "void" colour.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hcframe.components import LabelMaps

__all__ = [
    "UNKNOWN",
    "UNKNOWN_COLOUR",
    "colour_labels",
    "label_map_grid",
    "legend_strip",
    "overlay",
    "schp_palette",
    "stack_images",
]

#: The class id meaning "no class here".
UNKNOWN = 255
#: The colour of pixels without a class (PASCAL VOC's void colour).
UNKNOWN_COLOUR = (224, 224, 192)
_WHITE = (255, 255, 255)
_INK = (0, 0, 0)


def schp_palette(num_classes: int) -> np.ndarray:
    """``[num_classes, 3]`` uint8 colours: class ``c``'s bits ``0, 3, 6, ...`` set red's bits
    ``7, 6, 5, ...``, bits ``1, 4, 7, ...`` green's and bits ``2, 5, 8, ...`` blue's (SCHP's
    ``get_palette``, the PASCAL VOC colour map)."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for c in range(num_classes):
        rgb = [0, 0, 0]
        bits, shift = c, 7
        while bits:
            for channel in range(3):
                rgb[channel] |= ((bits >> channel) & 1) << shift
            bits >>= 3
            shift -= 1
        palette[c] = rgb
    return palette


def colour_labels(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``[..., h, w]`` class ids -> ``[..., h, w, 3]`` colours; 255 in :data:`UNKNOWN_COLOUR`, ids
    past the palette wrap around it."""
    labels = np.asarray(labels).astype(np.int64)
    out = palette[labels % len(palette)]
    out[labels == UNKNOWN] = UNKNOWN_COLOUR
    return out


def _nearest_resize(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of ``[N, h, w]`` to ``[N, height, width]`` (pixel centres)."""
    h, w = labels.shape[-2:]
    rows = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(np.int64)
    cols = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(np.int64)
    return labels[:, rows][:, :, cols]


def overlay(frames: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend class colours over ``frames`` (uint8 ``[N, H, W, 3]``) with weight ``alpha``;
    ``labels`` ``[N, h, w]`` are resized to the frames (nearest); background (0) stays as it is."""
    labels = _nearest_resize(np.asarray(labels), frames.shape[1], frames.shape[2])
    colours = colour_labels(labels, palette).astype(np.float32)
    blend = (1 - alpha) * frames.astype(np.float32) + alpha * colours
    out = np.where((labels != 0)[..., None], blend, frames.astype(np.float32))
    return np.round(out).astype(np.uint8)


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def legend_strip(label_ids: Sequence[int], label_names: Sequence[str], width: int, palette: np.ndarray) -> np.ndarray:
    """A white strip ``width`` pixels wide: a swatch and the name of every class in ``label_ids``,
    wrapped onto as many lines as needed. RGB uint8 ``[H, width, 3]``."""
    font = _font()
    swatch, pad, row_h = 12, 6, 16
    x, y, placed = pad, pad, []
    for k in label_ids:
        name = label_names[k] if 0 <= k < len(label_names) else str(k)
        w = swatch + 4 + int(font.getlength(name)) + 12
        if x + w > width and x > pad:
            x, y = pad, y + row_h
        placed.append((x, y, k, name))
        x += w
    image = Image.new("RGB", (width, y + row_h + pad), _WHITE)
    draw = ImageDraw.Draw(image)
    for x, y, k, name in placed:
        colour = UNKNOWN_COLOUR if k == UNKNOWN else tuple(int(c) for c in palette[k % len(palette)])
        draw.rectangle([x, y, x + swatch, y + swatch], fill=colour, outline=_INK)
        draw.text((x + swatch + 4, y), name, fill=_INK, font=font)
    return np.asarray(image)


def stack_images(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Images one under the other, left-aligned on white, ``gap`` pixels apart."""
    width = max(i.shape[1] for i in images)
    height = sum(i.shape[0] for i in images) + gap * (len(images) - 1)
    out = np.full((height, width, 3), 255, dtype=np.uint8)
    y = 0
    for image in images:
        out[y : y + image.shape[0], : image.shape[1]] = image
        y += image.shape[0] + gap
    return out


def label_map_grid(maps: LabelMaps, *, scale: int = 0, alpha: float = 0.6, legend: bool = True, title: str = "") -> np.ndarray:
    """``maps`` as one RGB uint8 image ``[H, W, 3]``: ``title`` (when given) and the captions on
    top; a row of the frames; one row per source in ``maps.maps`` (in its order) with the source's
    classes over the frames and its name at the left; then (``legend``) the classes present.
    ``scale`` enlarges small frames by repeating pixels (0: to at least 96 pixels)."""
    frames = np.asarray(maps.frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"LabelMaps.frames: expected uint8 [N, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    n, h, w = frames.shape[:3]
    sources = {name: np.asarray(m) for name, m in maps.maps.items()}
    for name, m in sources.items():
        if m.ndim != 3 or m.shape[0] != n:
            raise ValueError(f"LabelMaps.maps[{name!r}]: expected [{n}, h, w] class ids, got {list(m.shape)}")
    palette = schp_palette(max(len(maps.label_names), 1))
    scale = scale or max(1, -(-96 // min(h, w)))
    font = _font()
    gap, line_h = 4, 14
    label_w = max([int(font.getlength(s)) for s in ("frame", *sources)] + [0]) + 2 * gap
    cell_h, cell_w = h * scale, w * scale
    header = (line_h if title else 0) + (line_h if maps.captions else 0)
    rows = 1 + len(sources)
    width = label_w + n * (cell_w + gap) + gap
    image = Image.new("RGB", (width, header + rows * (cell_h + gap) + gap), _WHITE)
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((gap, 1), title, fill=_INK, font=font)
    if maps.captions:
        for j, caption in enumerate(maps.captions[:n]):
            draw.text((label_w + j * (cell_w + gap), header - line_h + 1), str(caption), fill=_INK, font=font)

    def up(picture: np.ndarray) -> Image.Image:
        return Image.fromarray(picture.repeat(scale, axis=0).repeat(scale, axis=1))

    pictures = [("frame", frames)] + [(name, overlay(frames, m, palette, alpha)) for name, m in sources.items()]
    for r, (name, row) in enumerate(pictures):
        y = header + gap + r * (cell_h + gap)
        draw.text((gap, y + cell_h // 2 - 5), name, fill=_INK, font=font)
        for j in range(n):
            image.paste(up(row[j]), (label_w + j * (cell_w + gap), y))
    out = np.asarray(image)
    if not legend:
        return out
    present = sorted({int(v) for m in sources.values() for v in np.unique(m) if int(v) != 0})
    return stack_images([out, legend_strip(present, maps.label_names, width, palette)], gap=0)
