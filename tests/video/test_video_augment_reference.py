"""video_augment against float64 re-computations of the definitions it is named after.

The references below are written from torchvision's definitions (``RandomResizedCrop.get_params``,
``ColorJitter`` with its random order, ``adjust_brightness`` / ``adjust_contrast`` /
``adjust_saturation`` as blends, ``adjust_hue`` as an HSV hue shift, ``rgb_to_grayscale`` weights
0.2989 / 0.587 / 0.114), in plain Python / NumPy float64; the HSV round trip is the standard
library's ``colorsys``. None of them calls the code under test.
"""

from __future__ import annotations

import colorsys
import itertools
import math
import random

import numpy as np
import pytest
import torch

from hcframe.data import collate
from hcframe.transforms import Normalize
from hcframe_video.transforms import (
    VideoAugment,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    grayscale,
    resized_crop_boxes,
)

from video_testdata import write_avi

LUMA = (0.2989, 0.587, 0.114)


# --- RandomResizedCrop ------------------------------------------------------------------------------
def reference_crop(height, width, scale, ratio, area_draws, ratio_draws, top_draw, left_draw):
    """torchvision's RandomResizedCrop.get_params for one image: up to 10 candidates (area
    ``U(scale) * H * W``, aspect ``exp(U(log ratio))``, sides rounded half-to-even), the first that
    fits is placed at a uniform integer position; else the centred whole image with its aspect
    clamped to ``ratio``. Random numbers come from the given uniforms in [0, 1), in the order
    torchvision consumes them. Returns ``(left, top, width, height)``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for u_area, u_ratio in zip(area_draws, ratio_draws):
        target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = math.floor(top_draw * (height - h + 1))
            left = math.floor(left_draw * (width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


CROP_CASES = [
    ((128, 171), (0.08, 1.0), (3 / 4, 4 / 3)),  # UCF101 after resizing the short side to 128
    ((171, 128), (0.3, 1.0), (3 / 4, 4 / 3)),  # portrait
    ((24, 32), (0.9, 1.0), (0.5, 2.0)),  # many candidates do not fit
    ((50, 400), (1.0, 1.0), (3 / 4, 4 / 3)),  # never fits: fallback, frame wider than the ratios
    ((400, 50), (1.0, 1.0), (3 / 4, 4 / 3)),  # fallback, frame taller than the ratios
    ((32, 32), (1.0, 1.0), (3 / 4, 4 / 3)),  # fallback to the whole frame
    ((7, 5), (0.08, 1.0), (1.0, 1.0)),
]


@pytest.mark.parametrize("frame, scale, ratio", CROP_CASES)
def test_crop_boxes_equal_torchvision_get_params_fed_the_same_numbers(frame, scale, ratio):
    g = torch.Generator().manual_seed(hash((frame, scale)) % 2**31)
    n = 1500
    u_area, u_ratio = torch.rand(n, 10, generator=g, dtype=torch.float64), torch.rand(n, 10, generator=g, dtype=torch.float64)
    u_top, u_left = torch.rand(n, generator=g, dtype=torch.float64), torch.rand(n, generator=g, dtype=torch.float64)
    height, width = frame
    boxes = resized_crop_boxes(torch.full((n,), height), torch.full((n,), width), u_area, u_ratio, u_top, u_left, scale, ratio)
    expected = [
        reference_crop(height, width, scale, ratio, u_area[i].tolist(), u_ratio[i].tolist(), float(u_top[i]), float(u_left[i]))
        for i in range(n)
    ]
    assert boxes.tolist() == [list(map(float, e)) for e in expected]
    # Every box lies inside the frame.
    assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= width).all())
    assert bool((boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= height).all())


def test_crop_fallbacks_are_exercised():
    # Scale 1 with an aspect other than the frame's never fits: the centred fallback, by hand.
    # 400x50 (wider than 4/3): height 50, width round(50 * 4/3) = 67, left (400 - 67) // 2 = 166;
    # 50x400 (taller than 3/4): width 50, height round(50 / (3/4)) = 67; 32x32: the whole frame.
    for frame, expected in (((50, 400), [166.0, 0.0, 67.0, 50.0]), ((400, 50), [0.0, 166.0, 50.0, 67.0]), ((32, 32), [0.0, 0.0, 32.0, 32.0])):
        box = resized_crop_boxes(torch.tensor([frame[0]]), torch.tensor([frame[1]]), torch.full((1, 10), 0.3, dtype=torch.float64),
                                 torch.full((1, 10), 0.1, dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64),
                                 torch.tensor([0.5], dtype=torch.float64), (1.0, 1.0), (3 / 4, 4 / 3))
        assert box[0].tolist() == expected


def test_crop_distribution_matches_torchvision_sampling_on_ucf101_frames():
    """The sampler with its own random numbers against the reference with Python's: area and
    the fraction of crops spanning a full side agree within 4.5 standard errors."""
    height, width, scale, ratio, n = 128, 171, (0.08, 1.0), (3 / 4, 4 / 3), 20000
    torch.manual_seed(0)
    aug = VideoAugment(scale=scale, ratio=ratio)
    ours = aug.sample_boxes(torch.tensor([[height, width]] * n)).double()
    rng = random.Random(0)
    theirs = torch.tensor([
        reference_crop(height, width, scale, ratio, [rng.random() for _ in range(10)], [rng.random() for _ in range(10)], rng.random(), rng.random())
        for _ in range(n)
    ], dtype=torch.float64)

    def stats(boxes):
        area = boxes[:, 2] * boxes[:, 3] / (height * width)
        full = ((boxes[:, 2] == width) | (boxes[:, 3] == height)).double()
        centre_x = (boxes[:, 0] + boxes[:, 2] / 2) / width
        return area, full, centre_x

    for a, b in zip(stats(ours), stats(theirs)):
        se = math.sqrt(float(a.var()) / n + float(b.var()) / n)
        assert abs(float(a.mean()) - float(b.mean())) < 4.5 * se + 1e-12
    area, full, centre_x = stats(ours)
    # torchvision's sampling, not clamping: about 0.43 of the frame, rarely a full side (a clamping
    # sampler gives 0.52 and a full side about a quarter of the time).
    assert 0.41 < float(area.mean()) < 0.45 and float(full.mean()) < 0.05
    assert abs(float(centre_x.mean()) - 0.5) < 0.01


# --- photometry -------------------------------------------------------------------------------------
def luma(x):
    return LUMA[0] * x[:, 0] + LUMA[1] * x[:, 1] + LUMA[2] * x[:, 2]  # [N, T, H, W]


def ref_brightness(x, f):
    return np.clip(f * x, 0, 1)


def ref_contrast(x, f):
    mean = luma(x).mean(axis=(2, 3), keepdims=True)[:, None]  # per frame: [N, 1, T, 1, 1]
    return np.clip(f * x + (1 - f) * mean, 0, 1)


def ref_saturation(x, f):
    return np.clip(f * x + (1 - f) * luma(x)[:, None], 0, 1)


def ref_hue(x, shift):
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[0], *x.shape[2:]):
        n, rest = idx[0], idx[1:]
        r, g, b = (x[(n, c) + rest] for c in range(3))
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        rgb = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
        for c in range(3):
            out[(n, c) + rest] = rgb[c]
    return out


REFERENCE = {0: ref_brightness, 1: ref_contrast, 2: ref_saturation, 3: ref_hue}
ADJUST = {0: adjust_brightness, 1: adjust_contrast, 2: adjust_saturation, 3: adjust_hue}


def edge_case_clips() -> np.ndarray:
    """``[7, 3, 2, 4, 4]`` float64 in [0, 1]: random pixels plus greys, black and white, pure and
    mixed primaries, channel ties, hues just either side of the red wrap-around, values 0 and 1."""
    rng = np.random.default_rng(0)
    x = rng.random((7, 3, 2, 4, 4))
    special = np.array([
        [0.5, 0.5, 0.5], [0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1],
        [1, 0, 1], [1, 0, 0.001], [1, 0.001, 0], [0.2, 0.2, 0.9], [0.9, 0.9, 0.1], [1, 0.5, 0], [0.3, 0, 0.3], [0, 0, 0.004],
    ])
    x[0] = special.T.reshape(3, 1, 4, 4).repeat(2, axis=1)
    x[1] = np.round(x[1] * 4) / 4  # many exact ties, zeros and ones
    x[2] = (x[2] > 0.5).astype(np.float64)  # only 0 and 1
    x = np.round(x * 255) / 255  # pixel values as they come from uint8
    return x


@pytest.mark.parametrize("op", [0, 1, 2, 3])
def test_each_colour_operation_equals_the_reference(op):
    x = edge_case_clips()
    if op == 3:
        factors = np.array([-0.5, -0.3, -0.01, 0.0, 0.01, 0.25, 0.5])
    else:
        factors = np.array([0.0, 0.3, 0.6, 1.0, 1.2, 1.7, 2.5])
    ours = ADJUST[op](torch.from_numpy(x).float(), torch.from_numpy(factors).float()).double().numpy()
    expected = np.stack([REFERENCE[op](x[i : i + 1], factors[i])[0] for i in range(len(x))])
    np.testing.assert_allclose(ours, expected, atol=2e-6, rtol=0)


def test_hue_shift_examples_by_hand():
    # Pure red shifted by a third of a turn is pure green; by -1/12 (wrapping below 0) it is
    # red with some blue; grey has no hue and stays grey.
    x = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.4, 0.4, 0.4]]).view(3, 3, 1, 1, 1)
    out = adjust_hue(x, torch.tensor([1 / 3, -1 / 12, 0.37]))[..., 0, 0, 0]
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.5], [0.4, 0.4, 0.4]]), atol=1e-6, rtol=0)


def test_grayscale_weights():
    x = torch.from_numpy(edge_case_clips()).float()
    np.testing.assert_allclose(grayscale(x)[:, 0].double().numpy(), luma(x.double().numpy()), atol=1e-6, rtol=0)


def test_colour_jitter_applies_the_drawn_operations_in_each_samples_order():
    x = torch.from_numpy(edge_case_clips()).float().repeat(4, 1, 1, 1, 1)  # 28 samples
    aug = VideoAugment(jitter_prob=0.7, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.2)
    torch.manual_seed(3)
    apply, order, factors = aug.sample_jitter(x.shape[0], x.device)
    assert 0 < int(apply.sum()) < x.shape[0]
    ours = aug.apply_jitter(x, apply, order, factors).double().numpy()
    xs = x.double().numpy()
    for i in range(x.shape[0]):
        expected = xs[i : i + 1]
        if apply[i]:
            for op in order[i].tolist():
                expected = REFERENCE[op](expected, float(factors[i, op]))
        np.testing.assert_allclose(ours[i], expected[0], atol=2e-5, rtol=0)
    # colour_jitter is exactly these draws followed by these operations.
    torch.manual_seed(3)
    torch.testing.assert_close(aug.colour_jitter(x).double().numpy(), ours, atol=0, rtol=0, check_dtype=False)
    # A zero strength skips its operation, as torchvision does.
    no_hue = VideoAugment(jitter_prob=1.0, brightness=0.5, contrast=0.0, saturation=0.0, hue=0.0)
    everyone = torch.ones(x.shape[0], dtype=torch.bool)
    out = no_hue.apply_jitter(x, everyone, order, factors).double().numpy()
    for i in range(x.shape[0]):
        np.testing.assert_allclose(out[i], ref_brightness(xs[i], float(factors[i, 0])), atol=2e-6, rtol=0)


def test_colour_jitter_order_is_uniform_and_factors_follow_torchvision_ranges():
    n = 24000
    aug = VideoAugment(jitter_prob=0.8, brightness=1.5, contrast=0.4, saturation=0.0, hue=0.1)
    torch.manual_seed(0)
    apply, order, factors = aug.sample_jitter(n, torch.device("cpu"))
    counts = {}
    for row in order.tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    assert set(counts) == set(itertools.permutations(range(4)))
    expected, sd = n / 24, math.sqrt(n / 24 * 23 / 24)
    assert all(abs(c - expected) < 4.5 * sd for c in counts.values())
    assert abs(float(apply.float().mean()) - 0.8) < 4.5 * math.sqrt(0.8 * 0.2 / n)
    # brightness 1.5: U(max(0, 1 - 1.5), 2.5); contrast 0.4: U(0.6, 1.4); hue U(-0.1, 0.1).
    for column, lo, hi in ((0, 0.0, 2.5), (1, 0.6, 1.4), (3, -0.1, 0.1)):
        values = factors[:, column].double()
        assert float(values.min()) >= lo and float(values.max()) <= hi
        assert abs(float(values.mean()) - (lo + hi) / 2) < 4.5 * (hi - lo) / math.sqrt(12 * n)


# --- flips, fine-tuning variant ---------------------------------------------------------------------
def coordinate_batch(b=6, v=2, t=2, h=20, w=28):
    x = torch.arange(w).view(1, w).expand(h, w)
    y = torch.arange(h).view(h, 1).expand(h, w)
    frame = torch.stack([x * 9, y * 12, (x + y) * 5]).to(torch.uint8)
    return {"views": frame[None, None, :, None].repeat(b, v, 1, t, 1, 1).clone()}


def test_flip_disallowed_never_mirrors_and_keeps_the_random_stream():
    batch = coordinate_batch()
    flipping = VideoAugment(crop_size=16, flip_prob=1.0, jitter_prob=0, grayscale_prob=0, blur_prob=0)
    plain = VideoAugment(crop_size=16, flip_prob=1.0, jitter_prob=0, grayscale_prob=0, blur_prob=0)
    plain.set_flip_allowed(False)
    torch.manual_seed(4)
    mirrored = flipping(batch)["views"]
    torch.manual_seed(4)
    kept = plain(batch)["views"]
    for m, k in zip(mirrored, kept):
        torch.testing.assert_close(m.flip(-1), k, atol=1e-5, rtol=0)  # the same boxes, unmirrored
        assert torch.all(k[:, 0, :, :, -1] > k[:, 0, :, :, 0])  # red (the column) grows to the right


def test_finetune_transform_is_crop_and_flip_only():
    aug = VideoAugment(crop_size=16, scale=(0.2, 1.0))
    light = aug.finetune_transform()
    assert (light.jitter_prob, light.grayscale_prob, light.blur_prob) == (0.0, 0.0, 0.0)
    assert (aug.jitter_prob, aug.grayscale_prob, aug.blur_prob) == (0.8, 0.2, 0.5)  # the original is untouched
    same = VideoAugment(crop_size=16, scale=(0.2, 1.0), jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    batch = coordinate_batch()
    torch.manual_seed(9)
    first = light(batch)["views"]
    torch.manual_seed(9)
    second = same(batch)["views"]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


# --- frames of different sizes in one batch ---------------------------------------------------------
def ramp_sample(h, w):
    """Pixels whose red channel is the column fraction of the pixel centre (x 255) and parts
    whose channel 0 is the same fraction (channel 1 its complement), at the same resolution."""
    col = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    red = (col * 255).round().to(torch.uint8).view(1, w).expand(h, w)
    frame = torch.stack([red, torch.zeros_like(red), torch.full_like(red, 7)])
    views = frame[None, :, None].repeat(2, 1, 3, 1, 1)  # [V, 3, T, h, w]
    parts = torch.stack([col.view(1, w).expand(h, w), 1 - col.view(1, w).expand(h, w)])[None, :, None].repeat(2, 1, 3, 1, 1)
    return {"views": views, "parts": parts.to(torch.float16), "label": torch.tensor(0)}


def test_collate_pads_frames_of_different_sizes_and_records_them():
    batch = collate([ramp_sample(16, 20), ramp_sample(16, 30), ramp_sample(12, 30)])
    assert batch["views"].shape == (3, 2, 3, 3, 16, 30) and batch["parts"].shape == (3, 2, 2, 3, 16, 30)
    assert batch["views_hw"].tolist() == [[16, 20], [16, 30], [12, 30]] == batch["parts_hw"].tolist()
    # Padding repeats the last column and row.
    assert torch.equal(batch["views"][0, ..., 20:], batch["views"][0, ..., 19:20].expand(-1, -1, -1, -1, 10))
    assert torch.equal(batch["views"][2, ..., 12:, :], batch["views"][2, ..., 11:12, :].expand(-1, -1, -1, 4, -1))
    same = collate([ramp_sample(16, 20), ramp_sample(16, 20)])
    assert "views_hw" not in same and "parts_hw" not in same
    with pytest.raises(ValueError, match="different sizes"):
        Normalize()(batch)


def test_padded_batch_crops_inside_each_frame_and_parts_follow_the_pixels():
    sizes = [(16, 20), (16, 30), (12, 30), (20, 14)]
    batch = collate([ramp_sample(*s) for s in sizes])
    aug = VideoAugment(crop_size=12, part_size=12, scale=(0.08, 1.0), ratio=(0.5, 2.0), jitter_prob=0, grayscale_prob=0,
                       blur_prob=0, mean=(0, 0, 0), std=(1, 1, 1))
    torch.manual_seed(0)
    boxes = aug.sample_boxes(batch["views_hw"].repeat(50, 1))
    frames = batch["views_hw"].repeat(50, 1).double()
    assert bool((boxes[:, 0] + boxes[:, 2] <= frames[:, 1]).all() and (boxes[:, 1] + boxes[:, 3] <= frames[:, 0]).all())
    for seed in range(5):
        torch.manual_seed(seed)
        out = aug(batch)
        for clip, parts in zip(out["views"], out["parts"]):
            # Same box, same flip: the column fraction seen by the pixels is the one seen by the parts.
            torch.testing.assert_close(clip[:, 0].double(), parts[:, 0].double(), atol=3e-3, rtol=0)
            torch.testing.assert_close(parts.sum(1).double(), torch.ones_like(parts[:, 0]).double(), atol=2e-3, rtol=0)
    # Deterministic views of a padded batch equal those of each sample alone.
    evaluated = aug(batch, train=False)
    for i, s in enumerate(sizes):
        alone = aug(collate([ramp_sample(*s)]), train=False)
        for v in range(2):
            torch.testing.assert_close(evaluated["views"][v][i], alone["views"][v][0], atol=1e-6, rtol=0)
            torch.testing.assert_close(evaluated["parts"][v][i], alone["parts"][v][0], atol=1e-6, rtol=0)


def test_videos_of_two_aspect_ratios_train_in_one_batch(tmp_path):
    from hcframe_video.clips import VideoClipDataset

    write_avi(tmp_path / "a" / "narrow.avi", num_frames=12)  # 32x24
    write_avi(tmp_path / "a" / "wide.avi", num_frames=12, width=48, height=24)
    ds = VideoClipDataset(["a/narrow.avi", "a/wide.avi"], [0, 0], ["a"], str(tmp_path), clip_len=4, stride=1, short_side=12,
                          crop_size=8)
    ds.num_views = 2
    batch = collate([ds[0], ds[1]])
    assert batch["views"].shape == (2, 2, 3, 4, 12, 24) and batch["views_hw"].tolist() == [[12, 16], [12, 24]]
    out = VideoAugment(crop_size=8)(batch)
    assert [tuple(v.shape) for v in out["views"]] == [(2, 3, 4, 8, 8)] * 2
