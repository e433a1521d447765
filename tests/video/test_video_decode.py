"""Decoding and clip sampling: frame numbering, one-pass views, test views, parts, bad videos."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from hcframe.data import BadVideo, TargetStore, collate, sample_generator
from hcframe_video.clips import BadVideoError, VideoClipDataset, area_resample_box, clip_frame_indices
from hcframe_video.decode import decode_frames, plan_segments, probe_video, resized_size

from video_testdata import frame_level, write_avi, write_mp4, write_video


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode")
    return {
        "avi": write_avi(root / "v.avi", num_frames=40),
        "mp4": write_mp4(root / "v.mp4", num_frames=40),
        "mkv": write_video(root / "v.mkv", 40, "libx264", 10),
        "root": root,
    }


@pytest.mark.parametrize("kind", ["avi", "mp4", "mkv"])
def test_frames_are_numbered_by_presentation_time(videos, kind):
    info = probe_video(str(videos[kind]))
    assert info.num_frames == 40 and (info.width, info.height) == (32, 24)
    assert info.frames_counted == (kind == "mkv")  # Matroska states no frame count: counted by demuxing
    wanted = [33, 2, 17, 17, 26, 39, 13]
    frames, unique = decode_frames(str(videos[kind]), wanted, info=info)
    assert unique == sorted(set(wanted))
    # Reference: every frame decoded in order from the start, straight from PyAV.
    with av.open(str(videos[kind])) as container:
        reference = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert len(reference) == 40
    np.testing.assert_array_equal(frames, reference[unique])
    # And the gray level is roughly the encoded one (4 levels per frame; MPEG-4 at tiny sizes is lossy).
    np.testing.assert_allclose(frame_level(frames), 4 * np.asarray(unique), atol=10)


@pytest.mark.parametrize("kind", ["avi", "mp4"])
def test_union_decode_equals_separate_decodes(videos, kind):
    path = str(videos[kind])
    view_a, view_b = [3, 5, 7, 9], [20, 22, 24, 26]
    both, unique = decode_frames(path, view_a + view_b, size=(20, 16))
    alone_a, _ = decode_frames(path, view_a, size=(20, 16))
    alone_b, _ = decode_frames(path, view_b, size=(20, 16))
    np.testing.assert_array_equal(both[np.searchsorted(unique, view_a)], alone_a)
    np.testing.assert_array_equal(both[np.searchsorted(unique, view_b)], alone_b)


def test_two_view_sample_is_whole_resized_frames_matching_separate_decodes(videos):
    ds = VideoClipDataset(["v.mp4"], [0], ["x"], str(videos["root"]), clip_len=4, stride=3, short_side=20, crop_size=16)
    ds.num_views = 2
    sample = ds[(0, 3)]
    # Train views keep the whole frame, short side resized to short_side (32x24 -> 27x20): the
    # random resized crop is the batch transform's, over the whole frame.
    assert sample["views"].shape == (2, 3, 4, 20, 27) and sample["views"].dtype == torch.uint8
    plans = ds.plan_views(ds.video_info(0), sample_generator(ds.seed, 3, 0))
    assert plans[0].resize == resized_size(32, 24, 20) == (27, 20)
    for v, plan in enumerate(plans):
        assert sample["frame_indices"][v].tolist() == plan.frame_indices
        assert plan.normalised_box(16) == (0.0, 0.0, 1.0, 1.0)
        # The same view decoded on its own (its own pass over the file) is bit-identical.
        alone, unique = decode_frames(str(videos["mp4"]), plan.frame_indices, size=(27, 20))
        np.testing.assert_array_equal(sample["views"][v].numpy(), alone[np.searchsorted(unique, plan.frame_indices)].transpose(3, 0, 1, 2))
    # Views of a sample are independent draws; the same (index, epoch) replays exactly.
    assert sample["frame_indices"][0].tolist() != sample["frame_indices"][1].tolist()
    again = ds[(0, 3)]
    assert torch.equal(again["views"], sample["views"])
    other_epochs = [ds[(0, e)]["frame_indices"].tolist() for e in range(4)]
    assert len({str(x) for x in other_epochs}) > 1
    assert torch.equal(ds[0]["views"], ds[(0, 0)]["views"])


def test_test_mode_views_cover_clips_and_crops(videos):
    ds = VideoClipDataset(["v.avi"], [0], ["x"], str(videos["root"]), clip_len=4, stride=2, crop_size=16, mode="test",
                          num_clips=5, num_crops=3)
    ds.num_views = 2  # ignored in test mode
    sample = ds[0]
    assert sample["views"].shape == (15, 3, 4, 16, 16) and ds.views_per_sample == 15
    # Starts spread over [0, 40 - 7]; views are clip-major.
    starts = sample["frame_indices"][::3, 0].tolist()
    assert starts == [0, 8, 16, 25, 33]
    assert all(sample["frame_indices"][3 * c + k].tolist() == clip_frame_indices(starts[c], 4, 2, 40) for c in range(5) for k in range(3))
    # Resized to short side 16: 21x16 frames; crops at x = 0, 2, 5 (left, centre, right).
    frames, unique = decode_frames(str(videos["avi"]), clip_frame_indices(16, 4, 2, 40), size=(21, 16))
    for k, x in enumerate([0, 2, 5]):
        np.testing.assert_array_equal(sample["views"][6 + k].numpy(), frames[:, :, x : x + 16].transpose(3, 0, 1, 2))


def test_short_video_is_clamped(videos):
    ds = VideoClipDataset(["v.avi"], [0], ["x"], str(videos["root"]), clip_len=16, stride=4, short_side=24, crop_size=16)
    assert clip_frame_indices(0, 16, 4, 40)[-1] == 39
    indices = ds[0]["frame_indices"][0].tolist()
    assert indices[0] == 0 and indices[9] == 36 and indices[10:] == [39] * 6


class CoordinateStore(TargetStore):
    """Two-channel maps at (w, h): channel 0 is the x coordinate in [0, 1] of each cell's centre,
    channel 1 its complement (they sum to 1); odd frames are unknown (all zeros)."""

    label_names = ("x", "not_x")

    def __init__(self, w: int, h: int) -> None:
        self.w, self.h = w, h
        self.calls = []

    def read(self, video_id, frame_indices):
        self.calls.append((video_id, list(frame_indices)))
        x = (torch.arange(self.w, dtype=torch.float64) + 0.5) / self.w
        plane = x.expand(self.h, self.w)
        maps = torch.stack([plane, 1 - plane])[:, None].repeat(1, len(frame_indices), 1, 1)
        odd = torch.tensor([f % 2 == 1 for f in frame_indices])
        maps[:, odd] = 0
        return maps.float()


def test_parts_cover_the_whole_frame_like_the_pixels(videos):
    ds = VideoClipDataset(["v.mp4"], [0], ["x"], str(videos["root"]), clip_len=5, stride=1, short_side=24, crop_size=16,
                          part_size=4)
    ds.num_views = 3
    # A store at the resized frame's resolution (32x24); train views are the whole 32x24 frame and
    # the parts cover it at part_size / crop_size = 1/4 of the pixel density: 4x4 block means.
    store = CoordinateStore(32, 24)
    ds.target_store = store
    for epoch in range(3):
        sample = ds[(0, epoch)]
        parts = sample["parts"]
        assert sample["views"].shape[-2:] == (24, 32)
        assert parts.dtype == torch.float16 and parts.shape == (3, 2, 5, 6, 8)
        assert store.calls[-1][0] == "v.mp4"
        plans = ds.plan_views(ds.video_info(0), sample_generator(0, epoch, 0))
        full = store.read("v.mp4", list(range(40))).double()
        for v, plan in enumerate(plans):
            crop = full[:, plan.frame_indices]
            reference = crop.reshape(2, 5, 6, 4, 8, 4).mean(dim=(3, 5))
            torch.testing.assert_close(parts[v].double(), reference, atol=2e-3, rtol=0)
            sums = parts[v].double().sum(dim=0)
            odd = torch.tensor([f % 2 == 1 for f in plan.frame_indices])
            torch.testing.assert_close(sums[~odd], torch.ones_like(sums[~odd]), atol=2e-3, rtol=0)
            assert sums[odd].abs().max() == 0


def test_parts_from_a_coarser_store_follow_the_x_coordinate(videos):
    ds = VideoClipDataset(["v.avi"], [0], ["x"], str(videos["root"]), clip_len=2, stride=1, short_side=24, crop_size=16,
                          part_size=8)
    ds.target_store = CoordinateStore(7, 5)  # not a divisor of anything
    sample = ds[(0, 1)]
    plan = ds.plan_views(ds.video_info(0), sample_generator(0, 1, 0))[0]
    x0, _, x1, _ = plan.normalised_box(16)
    assert sample["parts"].shape[-2:] == (12, 16)  # the whole 32x24 frame at 8 cells per 16 pixels
    centres = x0 + (torch.arange(16, dtype=torch.float64) + 0.5) / 16 * (x1 - x0)
    # Area averages of a piecewise-constant x ramp stay within one store cell of the true centre.
    t = int(sample["frame_indices"][0, 0] % 2)  # the clip's even (known) frame
    measured = sample["parts"][0, 0, t].double()
    assert sample["frame_indices"][0, t] % 2 == 0
    assert (measured - centres[None, :]).abs().max() <= 1 / 7
    assert torch.all(measured[:, 1:] >= measured[:, :-1])


def test_area_resample_matches_supersampled_reference():
    torch.manual_seed(0)
    maps = torch.rand(3, 2, 6, 9, dtype=torch.float64)
    box = (0.13, 0.2, 0.81, 0.95)
    out = area_resample_box(maps, box, 5).double()
    # Reference: replicate every cell into an s x s block, then average the pixels whose centres fall in each output cell.
    s = 60
    fine = maps.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)
    H, W = fine.shape[-2:]
    ys = (torch.arange(H, dtype=torch.float64) + 0.5) / H
    xs = (torch.arange(W, dtype=torch.float64) + 0.5) / W
    ref = torch.zeros(3, 2, 5, 5, dtype=torch.float64)
    for i in range(5):
        for j in range(5):
            ylo, yhi = box[1] + (box[3] - box[1]) * i / 5, box[1] + (box[3] - box[1]) * (i + 1) / 5
            xlo, xhi = box[0] + (box[2] - box[0]) * j / 5, box[0] + (box[2] - box[0]) * (j + 1) / 5
            my = (ys >= ylo) & (ys < yhi)
            mx = (xs >= xlo) & (xs < xhi)
            ref[..., i, j] = fine[..., my, :][..., mx].mean(dim=(-2, -1))
    torch.testing.assert_close(out, ref, atol=5e-3, rtol=0)


def test_bad_videos_are_returned_with_path_and_reason(mixed_root):
    names = ["good/a.avi", "bad/truncated.avi", "good/b.mp4", "bad/empty.mp4", "bad/corrupt.mp4", "good/c.mkv"]
    ds = VideoClipDataset(names, [0, 1, 0, 1, 1, 0], ["good", "bad"], str(mixed_root), clip_len=4, stride=2,
                          short_side=24, crop_size=16, mode="test", num_clips=2, num_crops=1)
    results = [ds[i] for i in range(len(ds))]
    bad = {r.path: r.reason for r in results if isinstance(r, BadVideo)}
    assert set(bad) == {str(mixed_root / n) for n in names if n.startswith("bad/")}
    assert "truncated" in bad[str(mixed_root / "bad/truncated.avi")] or "Invalid data" in bad[str(mixed_root / "bad/truncated.avi")]
    assert "Invalid data found" in bad[str(mixed_root / "bad/corrupt.mp4")]
    assert all(isinstance(results[i], dict) for i in (0, 2, 5))
    batch = collate(results)
    assert batch["views"].shape[0] == 3 and [b.index for b in batch["bad_videos"]] == [1, 3, 4]

    strict = VideoClipDataset(names, [0, 1, 0, 1, 1, 0], ["good", "bad"], str(mixed_root), clip_len=4, stride=2,
                              short_side=24, crop_size=16, on_bad_video="raise")
    assert isinstance(strict[0], dict)
    with pytest.raises(BadVideoError, match=r"corrupt\.mp4: cannot open") as info:
        strict[4]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"clip_len": 0}, "clip_len"),
        ({"mode": "val"}, "mode"),
        ({"crop_size": 200}, "crop_size"),
        ({"on_bad_video": "ignore"}, "on_bad_video"),
        ({"stride": 1.5}, "stride"),
    ],
)
def test_constructor_validates_arguments(videos, kwargs, message):
    with pytest.raises(ValueError, match=message):
        VideoClipDataset(["v.avi"], [0], ["x"], str(videos["root"]), **kwargs)


def test_labels_and_ids(videos):
    ds = VideoClipDataset([str(videos["avi"]), "v.mp4"], [1, -1], ["a", "b"], str(videos["root"]))
    assert ds.video_id(0) == "v.avi" and ds.video_path(1) == str(videos["root"] / "v.mp4")
    assert ds.labels() == [1, -1] and ds.num_classes == 2
    with pytest.raises(ValueError, match=r"labels\[0\]"):
        VideoClipDataset(["v.avi"], [2], ["a", "b"], str(videos["root"]))


def test_keyframes_and_segment_planning(videos):
    assert probe_video(str(videos["avi"])).keyframes == (0, 12, 24, 36)
    assert probe_video(str(videos["mp4"])).keyframes == (0,)
    # Views far apart in a file with frequent keyframes are read with a seek in between;
    # with one keyframe per video, continuing is cheaper than restarting from frame 0.
    assert plan_segments([3, 5, 7, 20, 22, 24, 26], (0, 12, 24, 36)) == [[3, 5, 7], [20, 22, 24, 26]]
    assert plan_segments([3, 5, 11, 13], (0, 12, 24, 36)) == [[3, 5, 11, 13]]
    assert plan_segments([3, 5, 7, 20, 22], (0,)) == [[3, 5, 7, 20, 22]]
    assert plan_segments([3, 30], ()) == [[3, 30]]
