"""VideoAugment: one warp per clip for pixels and parts, photometry, determinism, eval mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hcframe.registry import get_registry
from hcframe_video.transforms import VideoAugment

B, V, T, S = 6, 2, 3, 24


def coordinate_batch() -> dict:
    """Pixels whose red channel is the column and green the row (scaled to 0..240), blue the
    frame; parts whose channel 0 is the column fraction and channel 1 its complement."""
    x = torch.arange(S).view(1, S).expand(S, S)
    y = torch.arange(S).view(S, 1).expand(S, S)
    frame = torch.stack([x * 10, y * 10, torch.zeros_like(x)])  # [3, S, S]
    views = frame[None, None, :, None].repeat(B, V, 1, T, 1, 1).clone()
    for t in range(T):
        views[:, :, 2, t] = 50 * t
    col = x.double() * 10 / 255
    parts = torch.stack([col, 1 - col])[None, None, :, None].repeat(B, V, 1, T, 1, 1)
    return {"views": views.to(torch.uint8), "parts": parts.to(torch.float16), "label": torch.arange(B)}


def geometric_only(**kw) -> VideoAugment:
    return VideoAugment(crop_size=S, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, mean=(0, 0, 0), std=(1, 1, 1), **kw)


def test_pixels_and_parts_share_the_warp_and_frames_share_it_too():
    torch.manual_seed(0)
    out = geometric_only(scale=(0.2, 0.6))(coordinate_batch())
    assert len(out["views"]) == V and len(out["parts"]) == V
    flipped = 0
    for v in range(V):
        clip, parts = out["views"][v], out["parts"][v]
        assert clip.shape == (B, 3, T, S, S) and parts.shape == (B, 2, T, S, S)
        # Column coordinate seen by the pixels == column fraction seen by the parts (same warp).
        torch.testing.assert_close(clip[:, 0].double(), parts[:, 0].double(), atol=2e-3, rtol=0)
        # Crops lie inside the frame: parts still sum to 1 everywhere.
        torch.testing.assert_close(parts.sum(1).double(), torch.ones(B, T, S, S, dtype=torch.float64), atol=2e-3, rtol=0)
        # Every frame of a clip got the same warp; the blue channel still tells frames apart.
        assert torch.allclose(clip[:, :2, 0], clip[:, :2, 1]) and torch.allclose(clip[:, :2, 0], clip[:, :2, 2])
        torch.testing.assert_close(clip[:, 2, :, 5, 5], (torch.arange(T) * 50 / 255).float().expand(B, T), atol=1e-5, rtol=0)
        direction = clip[:, 0, 0, S // 2, -1] - clip[:, 0, 0, S // 2, 0]
        flipped += int((direction < 0).sum())
        # A crop magnifies: the coordinate span is smaller than the whole frame's.
        assert torch.all(direction.abs() < 230 / 255)
    assert 0 < flipped < B * V  # some flipped, some not
    assert out["pixel_mean"].tolist() == [0, 0, 0] and out["pixel_std"].tolist() == [1, 1, 1]


def test_flip_can_be_disabled_and_views_differ():
    torch.manual_seed(1)
    out = geometric_only(flip=False)(coordinate_batch())
    for clip in out["views"]:
        assert torch.all(clip[:, 0, 0, S // 2, -1] > clip[:, 0, 0, S // 2, 0])
    assert not torch.allclose(out["views"][0], out["views"][1])


def test_parts_outside_the_frame_are_unknown():
    aug = geometric_only()
    theta = torch.tensor([[[2.0, 0, 0], [0, 1.0, 0]]])  # output spans twice the frame's width
    parts = torch.ones(1, 2, 1, 8, 8) / 2
    warped = aug.warp(parts, theta, (8, 8), padding="zeros")
    sums = warped.sum(1)[0, 0]
    assert torch.allclose(sums[:, 2:6], torch.ones(8, 4)) and torch.all(sums[:, [0, 1, 6, 7]] == 0)


def test_deterministic_given_the_global_seed_and_eval_mode():
    aug = VideoAugment(crop_size=16)
    batch = coordinate_batch()
    torch.manual_seed(5)
    first = aug(batch)
    torch.manual_seed(5)
    second = aug(batch)
    torch.manual_seed(6)
    third = aug(batch)
    for a, b, c in zip(first["views"], second["views"], third["views"]):
        assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(first["parts"][0], second["parts"][0])
    # Eval: centre square, resized to crop_size, normalised; no randomness consumed.
    state = torch.random.get_rng_state()
    ev = aug(batch, train=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    expected = torch.nn.functional.interpolate(batch["views"][:, 0, :, 0].float() / 255, size=(16, 16), mode="bilinear",
                                               align_corners=False, antialias=False)
    mean = torch.tensor(aug.mean).view(1, 3, 1, 1)
    std = torch.tensor(aug.std).view(1, 3, 1, 1)
    torch.testing.assert_close(ev["views"][0][:, :, 0], (expected - mean) / std, atol=1e-4, rtol=0)


def test_photometric_operations():
    torch.manual_seed(0)
    clip = torch.rand(4, 3, 2, 8, 8)
    gray = VideoAugment(grayscale_prob=1.0).random_grayscale(clip)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    reference = 0.2989 * clip[:, 0] + 0.587 * clip[:, 1] + 0.114 * clip[:, 2]  # torchvision's weights
    torch.testing.assert_close(gray[:, 0], reference)
    # Zero-strength jitter is the identity (the HSV definitions: tests/video/test_video_augment_reference.py).
    identity = VideoAugment(jitter_prob=1.0, brightness=0, contrast=0, saturation=0, hue=0).colour_jitter(clip)
    torch.testing.assert_close(identity, clip, atol=1e-5, rtol=0)
    mid = clip * 0.5 + 0.25  # away from the clamp
    hued = VideoAugment(jitter_prob=1.0, brightness=0, contrast=0, saturation=0, hue=0.5).colour_jitter(mid)
    assert not torch.allclose(hued, mid)
    # Blur keeps flat images flat and the mean of a clip roughly; it smooths noise.
    blur = VideoAugment(blur_prob=1.0, blur_sigma=(1.0, 1.5))
    flat = torch.full((2, 3, 2, 12, 12), 0.3)
    torch.testing.assert_close(blur.random_blur(flat), flat)
    noisy = torch.rand(2, 3, 2, 12, 12)
    assert blur.random_blur(noisy).std() < noisy.std() * 0.7


def test_validation_and_registration():
    with pytest.raises(ValueError, match="scale"):
        VideoAugment(scale=(0.8, 0.2))
    with pytest.raises(ValueError, match="flip_prob"):
        VideoAugment(flip_prob=1.5)
    assert get_registry().get("transform", "video_augment").factory is VideoAugment


def test_dataset_batch_through_the_transform(mixed_root):
    from hcframe.data import collate
    from hcframe_video.clips import VideoClipDataset

    class HalfStore:
        label_names = ("a", "b")

        def read(self, video_id, frame_indices):
            return torch.full((2, len(frame_indices), 6, 8), 0.5)

    ds = VideoClipDataset(["good/a.avi", "good/b.mp4", "bad/empty.mp4"], [0, 1, 0], ["a", "b"], str(mixed_root),
                          clip_len=4, stride=2, short_side=24, crop_size=16, part_size=4)
    ds.num_views, ds.target_store = 2, HalfStore()
    batch = collate([ds[(i, 0)] for i in range(3)])
    # Whole 32x24 frames; parts over the whole frame at 4 cells per 16 pixels.
    assert batch["views"].shape == (2, 2, 3, 4, 24, 32) and batch["parts"].shape == (2, 2, 2, 4, 6, 8)
    assert len(batch["bad_videos"]) == 1
    torch.manual_seed(0)
    out = VideoAugment(crop_size=12, part_size=3)(batch)
    assert [v.shape for v in out["views"]] == [(2, 3, 4, 12, 12)] * 2
    assert [p.shape for p in out["parts"]] == [(2, 2, 4, 3, 3)] * 2
    torch.testing.assert_close(out["parts"][0].sum(1), torch.ones(2, 4, 3, 3))


def test_mirrored_part_maps_swap_left_and_right_classes():
    from hcframe_video.partmaps import LIP_LABELS

    torch.manual_seed(0)
    k = len(LIP_LABELS)
    parts = torch.zeros(4, 1, k, 1, 8, 8)
    parts[:, :, 0] = 1.0
    parts[:, :, 0, :, :, :2] = 0.0
    parts[:, :, 14, :, :, :2] = 1.0  # a left arm along the left edge
    batch = {"views": torch.zeros(4, 1, 3, 1, 8, 8, dtype=torch.uint8), "parts": parts}
    mirror = VideoAugment(crop_size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=1.0, jitter_prob=0, grayscale_prob=0, blur_prob=0)
    mirror.set_part_labels(LIP_LABELS)
    out = mirror(batch, train=True)["parts"][0]
    # Mirrored: the arm is now on the right edge and, seen in a mirror, it is a right arm (15).
    assert torch.allclose(out[:, 15, :, :, -2:], torch.ones(4, 1, 8, 2), atol=1e-5)
    assert out[:, 14].abs().max() < 1e-6
    plain = VideoAugment(crop_size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=1.0, jitter_prob=0, grayscale_prob=0, blur_prob=0)
    assert plain(batch, train=True)["parts"][0][:, 14, :, :, -2:].min() > 0.99  # without labels: no swap


def test_declared_clip_shape_follows_the_dataset_and_transform_arguments():
    """``hcframe info``'s clip shape: the dataset's clip_len and crop (the synthetic world's short
    side when crop_size is 0), then the transform's crop_size; no dataset is built for it."""
    from hcframe.info import training_clip_shape
    from hcframe.recipe import load_recipe

    quickstart = Path(__file__).resolve().parents[2] / "examples" / "quickstart.toml"
    assert training_clip_shape(load_recipe(quickstart)) == (8, 32, 32)
    assert training_clip_shape(load_recipe(quickstart, ["data.clip_len=4", "transform.crop_size=24"])) == (4, 24, 24)
    assert training_clip_shape(load_recipe(quickstart, ['transform={name = "normalize"}', "data.crop_size=20"])) == (8, 20, 20)
    ucf = load_recipe(quickstart, ['data={name = "ucf101", root = "/nonexistent", clip_len = 16, crop_size = 112}', "transform.crop_size=96"])
    assert training_clip_shape(ucf) == (16, 96, 96)
