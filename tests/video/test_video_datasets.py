"""The dataset loaders on generated miniature trees with the official names and split files."""

from __future__ import annotations

import shutil
import warnings

import pytest

from hcframe.registry import get_registry
from hcframe_video.datasets import HMDB51, UCF101, Kinetics, VideoFolder, VideoList

from video_testdata import HMDB_CLASSES, UCF_CLASSES, UCF_GROUPS, hmdb_name, ucf_name, write_mp4

SMALL = dict(clip_len=4, stride=2, short_side=24, crop_size=16)


@pytest.mark.parametrize("split", [1, 2, 3])
def test_ucf101_splits_have_the_right_videos_and_labels(ucf_root, split):
    train = UCF101(str(ucf_root), split=split, subset="train", **SMALL)
    test = UCF101(str(ucf_root), split=split, subset="test", mode="test", num_clips=2, num_crops=1, **SMALL)
    assert train.class_names == tuple(UCF_CLASSES)
    assert len(train) == 9 and len(test) == 3
    test_group = UCF_GROUPS[split - 1]
    expected_test = {ucf_name(c, test_group, 1): k for k, c in enumerate(UCF_CLASSES)}
    assert {test.video_id(i): test.labels()[i] for i in range(3)} == expected_test
    expected_train = {ucf_name(c, g, 1): k for k, c in enumerate(UCF_CLASSES) for g in UCF_GROUPS if g != test_group}
    assert {train.video_id(i): train.labels()[i] for i in range(9)} == expected_train
    sample = train[0]
    # Train views: the whole 32x24 frame (short side 24); test views: 16-pixel crops.
    assert sample["views"].shape == (1, 3, 4, 24, 32) and int(sample["label"]) == train.labels()[0]
    assert test[2]["views"].shape == (2, 3, 4, 16, 16)


def test_ucf101_errors_name_the_path(ucf_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="UCF101 root"):
        UCF101(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"classInd\.txt"):
        UCF101(str(ucf_root), annotations=str(tmp_path))
    with pytest.raises(ValueError, match="split: expected 1, 2 or 3"):
        UCF101(str(ucf_root), split=4)
    with pytest.raises(ValueError, match="subset"):
        UCF101(str(ucf_root), subset="val")
    # A split file naming a video that is not on disk: one line naming the first missing path.
    notes = tmp_path / "notes"
    shutil.copytree(ucf_root / "ucfTrainTestlist", notes)
    with open(notes / "trainlist01.txt", "a") as handle:
        handle.write("Archery/v_Archery_g25_c07.avi 2\n")
    with pytest.raises(FileNotFoundError, match=r"v_Archery_g25_c07\.avi: listed in .*trainlist01\.txt but not found \(1 of 10") as info:
        UCF101(str(ucf_root), annotations=str(notes))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("split", [1, 2, 3])
def test_hmdb51_splits(hmdb_root, split):
    train = HMDB51(str(hmdb_root), split=split, subset="train", **SMALL)
    test = HMDB51(str(hmdb_root), split=split, subset="test", **SMALL)
    assert train.class_names == tuple(sorted(HMDB_CLASSES))
    assert len(train) == 3 and len(test) == 3  # one video per class each; the third is unused
    test_k, train_k = (split - 1) % 3, split % 3
    assert {test.video_id(i) for i in range(3)} == {f"{c}/{hmdb_name(c, test_k)}" for c in HMDB_CLASSES}
    assert {train.video_id(i) for i in range(3)} == {f"{c}/{hmdb_name(c, train_k)}" for c in HMDB_CLASSES}
    for ds in (train, test):
        assert [ds.class_names[label] for label in ds.labels()] == [ds.video_id(i).split("/")[0] for i in range(3)]
    assert isinstance(test[1], dict)


def test_hmdb51_missing_split_files(hmdb_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no HMDB51 split files '<class>_test_split1\.txt'"):
        HMDB51(str(hmdb_root), splits=str(tmp_path))


def test_kinetics_csv_with_missing_file(tmp_path):
    root = tmp_path / "train"
    write_mp4(root / "abseiling" / "aaaaaaaaaaa_000010_000020.mp4", num_frames=20)
    write_mp4(root / "zumba" / "bbbbbbbbbbb_000000_000010.mp4", num_frames=20)
    write_mp4(root / "bbbbbbbbbbb_000005_000015.mp4", num_frames=20)  # flat layout works too
    csv = tmp_path / "kinetics400_train.csv"
    csv.write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,aaaaaaaaaaa,10,20,train\n"
        "zumba,bbbbbbbbbbb,0,10,train\n"
        "zumba,bbbbbbbbbbb,5,15,train\n"
        "zumba,ccccccccccc,0,10,train\n"
        "playing piano,ddddddddddd,3,13,val\n"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = Kinetics(str(root), str(csv), subset="train", **SMALL)
    assert len(caught) == 1 and "1 of 4 listed videos are missing" in str(caught[0].message)
    assert "ccccccccccc_000000_000010" in str(caught[0].message)
    assert ds.class_names == ("abseiling", "playing piano", "zumba")
    assert len(ds) == 3 and ds.labels() == [0, 2, 2] and ds.missing == ["ccccccccccc_000000_000010"]
    assert ds.video_id(2) == "bbbbbbbbbbb_000005_000015.mp4"
    with pytest.raises(FileNotFoundError, match="none of the 1 videos"):
        Kinetics(str(root), str(csv), subset="val")


def test_video_folder_and_list(ucf_root, tmp_path):
    folder = VideoFolder(str(ucf_root), **SMALL)
    assert folder.class_names == tuple(sorted(UCF_CLASSES))  # the annotation folder holds no videos
    assert len(folder) == 12 and sorted(set(folder.labels())) == [0, 1, 2]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my videos\n{ucf_name('Archery', 1, 1)} 1\n{ucf_name('ApplyEyeMakeup', 8, 1)} 0\n")
    ds = VideoList(str(listing), root=str(ucf_root), class_names=["makeup", "archery"], **SMALL)
    assert len(ds) == 2 and ds.labels() == [1, 0] and ds.class_names == ("makeup", "archery")
    unlabelled = tmp_path / "unlabelled.txt"
    unlabelled.write_text(f"{ucf_name('Archery', 1, 1)}\n")
    assert VideoList(str(unlabelled), root=str(ucf_root), **SMALL).labels() == [-1]
    mixed = tmp_path / "mixed.txt"
    mixed.write_text(f"{ucf_name('Archery', 1, 1)} 1\n{ucf_name('Archery', 8, 1)}\n")
    with pytest.raises(ValueError, match="give a label on every line or on none"):
        VideoList(str(mixed), root=str(ucf_root))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        VideoFolder(str(tmp_path / "empty_dir"))


def test_registered_and_built_by_name(ucf_root):
    registry = get_registry()
    for name in ("ucf101", "hmdb51", "kinetics", "video_folder", "video_list"):
        assert registry.get("dataset", name).provider == "hcframe-video"
    ds = registry.create("dataset", "ucf101", root=str(ucf_root), split=2, subset="test", **SMALL)
    assert isinstance(ds, UCF101) and len(ds) == 3
