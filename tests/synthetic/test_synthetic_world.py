"""The synthetic world: bit-identical regeneration from the seed, and part maps that align with
the pixels (in the generator's arrays and in the decoded H.264 files)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import numpy as np
import pytest

from hcframe_video.partmaps import PartMapStore
from hcframe_video.synthetic.generate import WorldSpec, build_world, encode_h264, read_world_spec, video_path
from hcframe_video.synthetic.world import (
    ACTION_NAMES,
    WorldConfig,
    background_bank,
    render_video,
)

HUMAN_LABELS = {2, 5, 13, 14, 15, 16, 17, 18, 19}


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file except the part store's meta.json (it records the creation time)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.relative_to(root).as_posix() != "parts/meta.json":
            out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_at_least_ten_actions_and_no_left_right_classes():
    assert len(ACTION_NAMES) >= 10 and len(set(ACTION_NAMES)) == len(ACTION_NAMES)
    assert not any("left" in a or "right" in a for a in ACTION_NAMES)


def test_arrays_regenerate_bit_identically_and_seeds_differ():
    config = WorldConfig(num_frames=8)
    a = render_video(config, 3, "train", 5)  # fresh bank
    bank = background_bank(config, 3)
    for i in range(5):  # generating other videos first must not matter
        render_video(config, 3, "train", i, bank)
    b = render_video(config, 3, "train", 5, bank)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = render_video(config, 4, "train", 5)
    d = render_video(config, 3, "test", 5)
    assert a.label == c.label == d.label  # same index -> same action...
    assert not np.array_equal(a.frames, c.frames)  # ...but another seed or split is another video
    assert not np.array_equal(a.frames, d.frames)
    assert not np.array_equal(background_bank(config, 3), background_bank(config, 4))


def test_files_regenerate_bit_identically_and_seeds_differ(tmp_path):
    spec = WorldSpec(config=WorldConfig(num_frames=6), seed=11, num_train=5, num_test=3)
    one = _file_hashes(build_world(tmp_path / "one", spec, workers=1, chunk=2))
    two = _file_hashes(build_world(tmp_path / "two", spec, workers=2, chunk=2))
    assert one == two
    assert sum(k.endswith(".mp4") for k in one) == 8 and sum(k.endswith(".npz") for k in one) == 8
    other = _file_hashes(build_world(tmp_path / "three", WorldSpec(config=spec.config, seed=12, num_train=5, num_test=3), workers=1))
    assert set(other) == set(one)
    differing = [k for k in one if k.endswith(".mp4") and one[k] != other[k]]
    assert len(differing) == 8
    # encoding alone is deterministic too
    frames = render_video(spec.config, 11, "train", 0).frames
    assert encode_h264(frames, 8, 10) == encode_h264(frames, 8, 10)


def test_raw_part_maps_align_with_pixels_exactly():
    config = WorldConfig(num_frames=12)
    bank = background_bank(config, 0)
    m = config.margin
    for index in range(len(ACTION_NAMES)):
        video = render_video(config, 0, "train", index, bank)
        frames, labels, details = video.frames, video.labels, video.details
        assert video.label == index and details["action"] == ACTION_NAMES[index]
        human = np.isin(labels, list(HUMAN_LABELS))
        assert human.sum(axis=(1, 2)).max() > 20  # the person is visible
        for lab, colour in details["label_colours"].items():
            where = labels == lab
            if where.any():
                assert (frames[where] == colour).all(), f"video {index}: label {lab} pixels are not its colour"
        # background-labelled pixels show the background texture at the camera's offset, or a distractor
        tex = bank[details["background_id"]]
        distractor_colours = {tuple(d["colour"]) for d in details["distractors"]}
        for t in range(config.num_frames):
            dx, dy = details["camera"][t]
            view = tex[m + dy : m + dy + config.height, m + dx : m + dx + config.width]
            bg = labels[t] == 0
            same = (frames[t][bg] == view[bg]).all(axis=-1)
            others = {tuple(c) for c in frames[t][bg][~same]}
            assert others <= distractor_colours


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _within_label_rms(values: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """Sum of squared deviations from each human label's mean, and the pixel count."""
    total, count = 0.0, 0
    for lab in HUMAN_LABELS:
        picked = values[labels == lab]
        if len(picked) > 1:
            total += float(((picked - picked.mean()) ** 2).sum())
            count += len(picked)
    return total, count


def test_decoded_videos_align_with_stored_part_maps(tiny_world):
    """On the decoded files: (1) inside each part (pixels whose 3x3 neighbourhood has one label)
    the colour is that video's colour for the part, within codec error; (2) every part is flat in
    luma (full resolution in 4:2:0) under the stored maps, and shifting the maps by one pixel in
    any direction makes the parts far from flat: the maps sit on the pixels, not next to them."""
    root, spec = tiny_world
    store = PartMapStore(root / "parts", expected_identity=spec.parts_identity())
    bank = background_bank(spec.config, spec.seed)
    errors = []
    shifts = [(0, 0), (0, 1), (1, 0), (0, -1), (-1, 0)]
    spread = {s: [0.0, 0] for s in shifts}
    for index in range(spec.num_train):
        rel = video_path("train", index)
        decoded = _decode(root / rel).astype(np.int64)
        labels = store.read_raw(rel, range(spec.config.num_frames))
        assert decoded.shape == (spec.config.num_frames, 32, 32, 3) and labels.shape == (spec.config.num_frames, 32, 32)
        raw = render_video(spec.config, spec.seed, "train", index, bank)
        np.testing.assert_array_equal(labels, raw.labels)  # the store holds the generator's maps
        colours = np.zeros((256, 3), dtype=np.int64)
        known = np.zeros(256, dtype=bool)
        for lab, colour in raw.details["label_colours"].items():
            colours[lab], known[lab] = colour, True
        padded = np.pad(labels, ((0, 0), (1, 1), (1, 1)), mode="edge")
        interior = np.ones_like(labels, dtype=bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                interior &= padded[:, 1 + dy : 33 + dy, 1 + dx : 33 + dx] == labels
        mask = interior & known[labels]
        errors.append(np.abs(decoded[mask] - colours[labels[mask]]))
        luma = _luma(decoded)
        for shift in shifts:
            total, count = _within_label_rms(luma, np.roll(labels, shift, axis=(1, 2)))
            spread[shift][0] += total
            spread[shift][1] += count
    err = np.concatenate(errors)
    assert len(err) > 500
    assert np.median(err) <= 4 and np.percentile(err, 95) <= 20, (np.median(err), np.percentile(err, 95))
    rms = {s: (total / count) ** 0.5 for s, (total, count) in spread.items()}
    assert rms[(0, 0)] < 4, rms  # grey levels: codec error only
    for shift in shifts[1:]:
        assert rms[shift] > 5 * rms[(0, 0)], rms


def test_world_folder_lists_and_spec(tiny_world):
    root, spec = tiny_world
    assert read_world_spec(root) == spec
    lines = (root / "train.txt").read_text().splitlines()
    assert len(lines) == spec.num_train
    for i, line in enumerate(lines):
        path, label = line.split()
        assert path == video_path("train", i) and int(label) == i % len(ACTION_NAMES)
        assert (root / path).is_file() and f"/{ACTION_NAMES[int(label)]}/" in path
    assert (root / "classes.txt").read_text().split() == list(ACTION_NAMES)
    test_paths = {line.split()[0] for line in (root / "test.txt").read_text().splitlines()}
    assert len(test_paths) == spec.num_test and not test_paths & {line.split()[0] for line in lines}
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".tmp-")]


def test_build_refuses_other_worlds_and_foreign_folders(tiny_world, tmp_path):
    root, spec = tiny_world
    with pytest.raises(ValueError, match="seed: stored 7, requested 8"):
        build_world(root, WorldSpec(config=spec.config, seed=8, num_train=24, num_test=12))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        build_world(tmp_path / "junk", spec)


@pytest.mark.parametrize("kwargs, match", [
    ({"height": 33}, "height"), ({"shortcut_strength": 1.5}, "shortcut_strength"), ({"num_frames": 1}, "num_frames"),
])  # fmt: skip
def test_world_config_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WorldConfig(**kwargs)


def test_shortcut_strength_zero_removes_identity_cues():
    config = WorldConfig(num_frames=4, shortcut_strength=0.0)
    bank = background_bank(config, 0)
    assert (bank == bank[0]).all()  # one shared background
    a, b = render_video(config, 0, "train", 0, bank), render_video(config, 0, "train", 1, bank)
    assert a.details["distractors"] == [] and b.details["distractors"] == []
    assert all(np.array_equal(a.details["colours"][k], b.details["colours"][k]) for k in a.details["colours"])
