"""The teacher cache: round trip against the online teacher within the stated quantisation error,
frame step, resumable/atomic building, refusal of a stale cache, and the CLI command."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import hcframe
from hcframe_parsing.cache import cache_teacher, open_teacher_cache, run_teacher
from hcframe_parsing.cli import cache_teacher_command
from hcframe_parsing.torchscript_teacher import TorchScriptTeacher
from hcframe_video.decode import decode_frames, probe_video
from hcframe_video.partmaps import TOPK_MAX_ERROR, PartMapError, PartMapStore
from parsing_helpers import FolderVideos

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

LABELS = ["bg", "head", "body", "legs"]
RES = (12, 16)


def _teacher(path, input_size=(16, 24)) -> TorchScriptTeacher:
    return TorchScriptTeacher(str(path), LABELS, list(input_size))


def _online_probs(teacher, dataset, i) -> tuple[torch.Tensor, list[int]]:
    path = dataset.video_path(i)
    info = probe_video(path)
    rgb, unique = decode_frames(path, list(range(info.num_frames)), info=info)
    frames = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0
    return torch.softmax(run_teacher(teacher, frames, RES), dim=1), unique  # [T, K, h, w]


def test_cache_round_trip_matches_online_outputs(tmp_path, video_folder, tiny_parser_file):
    teacher = _teacher(tiny_parser_file())
    dataset = FolderVideos(str(video_folder))
    report = cache_teacher(teacher, dataset, tmp_path / "full", resolution=RES, kind="topk", k=4, progress=False)
    assert report.written == ["clips/v0.mkv", "clips/v1.mkv", "clips/v2.mkv"] and report.frames == 18
    full = open_teacher_cache(tmp_path / "full", teacher)

    cache_teacher(teacher, dataset, tmp_path / "top2", resolution=RES, kind="topk", k=2, progress=False)
    top2 = open_teacher_cache(tmp_path / "top2", teacher)
    for i in range(len(dataset)):
        online, frames = _online_probs(teacher, dataset, i)
        read = full.read(dataset.video_id(i), frames).transpose(0, 1)  # [T, K, h, w]
        assert read.shape == online.shape
        assert (read - online).abs().max() <= TOPK_MAX_ERROR + 1e-6  # k = K: only quantisation
        # k = 2: the two most probable classes, renormalised, then quantised.
        values, ids = online.topk(2, dim=1)
        expected = torch.zeros_like(online).scatter_(1, ids, values / values.sum(dim=1, keepdim=True))
        read2 = top2.read(dataset.video_id(i), frames).transpose(0, 1)
        assert (read2 - expected).abs().max() <= TOPK_MAX_ERROR + 1e-6


def test_every_k_stores_the_sampled_frames_only(tmp_path, video_folder, tiny_parser_file):
    teacher = _teacher(tiny_parser_file())
    dataset = FolderVideos(str(video_folder))
    cache_teacher(teacher, dataset, tmp_path / "c", every_k=3, resolution=RES, kind="logits", progress=False)
    store = open_teacher_cache(tmp_path / "c", teacher)
    assert store.frame_indices("clips/v0.mkv").tolist() == [0, 3, 6]  # 7 frames
    assert store.frame_indices("clips/v1.mkv").tolist() == [0, 3, 4]  # 5 frames: and the last one
    online, _ = _online_probs(teacher, dataset, 0)
    read = store.read("clips/v0.mkv", [4]).transpose(0, 1)  # nearest stored frame: 3
    assert torch.allclose(read[0], online[3], atol=2e-3)  # float16 logits


def test_interrupted_build_resumes_and_leaves_only_complete_videos(tmp_path, video_folder, tiny_parser_file):
    teacher = _teacher(tiny_parser_file())
    dataset = FolderVideos(str(video_folder))

    def stop_after_first(video_id: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache_teacher(teacher, dataset, tmp_path / "c", resolution=RES, progress=False, on_video=stop_after_first)
    files = sorted(p.name for p in (tmp_path / "c" / "videos").iterdir())
    assert files == ["clips%2Fv0.mkv.npz"]  # no temporary files left behind
    report = cache_teacher(teacher, dataset, tmp_path / "c", resolution=RES, progress=False)
    assert report.skipped == ["clips/v0.mkv"] and report.written == ["clips/v1.mkv", "clips/v2.mkv"]
    assert PartMapStore(tmp_path / "c").video_ids() == ["clips/v0.mkv", "clips/v1.mkv", "clips/v2.mkv"]


def test_changed_checkpoint_or_input_size_invalidates_the_cache(tmp_path, video_folder, tiny_parser_file):
    path = tiny_parser_file(seed=0)
    teacher = _teacher(path)
    dataset = FolderVideos(str(video_folder))
    cache_teacher(teacher, dataset, tmp_path / "c", resolution=RES, progress=False)

    resized = _teacher(path, input_size=(32, 48))
    with pytest.raises(PartMapError, match=r"stale.*teacher.input_size: \[16,24\] -> \[32,48\]"):
        open_teacher_cache(tmp_path / "c", resized)
    retrained = _teacher(tiny_parser_file(seed=1, name="retrained.pt"))
    with pytest.raises(PartMapError, match=r"stale.*teacher.checkpoint_sha256: "):
        open_teacher_cache(tmp_path / "c", retrained)
    with pytest.raises(PartMapError, match="cannot resume teacher cache"):
        cache_teacher(retrained, dataset, tmp_path / "c", resolution=RES, progress=False)
    with pytest.raises(PartMapError, match=r"cannot resume teacher cache .*resolution: \[12,16\] -> \[6,8\]\)"):
        cache_teacher(teacher, dataset, tmp_path / "c", resolution=(6, 8), progress=False)


class _TestPlugin:
    @staticmethod
    @hcframe.hookimpl
    def hcframe_register(registry) -> None:
        registry.add("dataset", "parsing_test_folder", FolderVideos)


def test_cache_teacher_command(tmp_path, video_folder, tiny_parser_file, testkit):  # testkit: the tiny3d_test encoder
    hcframe.register_plugin(_TestPlugin(), name="parsing-cache-test")
    parser = tiny_parser_file()
    cache_dir = tmp_path / "cache"
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        f"""
[data]
name = "parsing_test_folder"
root = "{video_folder}"

[transform]
name = "normalize"

[model.encoder]
name = "tiny3d_test"

[tasks.parsing]
name = "parsing_distill"
cache = "{cache_dir}"

[tasks.parsing.teacher]
name = "torchscript"
path = "{parser}"
label_names = {LABELS!r}
input_size = [16, 24]
""".replace("'", '"')
    )
    runner = CliRunner()
    args = [str(recipe), "--resolution", "12", "16", "--k", "2", "--no-progress", "--device", "cpu"]
    result = runner.invoke(cache_teacher_command, args)
    assert result.exit_code == 0, result.output
    assert "3 videos written (18 frames), 0 already cached, 0 failed" in result.output
    store = open_teacher_cache(cache_dir, _teacher(parser))
    assert store.k == 2 and store.resolution == RES
    again = runner.invoke(cache_teacher_command, args)
    assert again.exit_code == 0 and "0 videos written (0 frames), 3 already cached" in again.output
    stale = runner.invoke(cache_teacher_command, [*args, "--set", "tasks.parsing.teacher.input_size=[32, 32]"])
    assert stale.exit_code == 2 and "cannot resume teacher cache" in stale.output  # refused before any work
