"""Registers the video data components and commands with hcframe (entry point ``hcframe: video``)."""

from typing import Any

from hcframe.registry import Registry, hookimpl

from hcframe_video.datasets import HMDB51, UCF101, Kinetics, VideoFolder, VideoList
from hcframe_video.transforms import VideoAugment


@hookimpl
def hcframe_register(registry: Registry) -> None:
    registry.add("dataset", "ucf101", UCF101)
    registry.add("dataset", "hmdb51", HMDB51)
    registry.add("dataset", "kinetics", Kinetics)
    registry.add("dataset", "video_folder", VideoFolder)
    registry.add("dataset", "video_list", VideoList)
    registry.add("transform", "video_augment", VideoAugment)


@hookimpl
def hcframe_add_commands(cli: Any) -> None:
    from hcframe_video.check import check_videos_command
    from hcframe_video.prepare import prepare_command

    cli.add_command(prepare_command)
    cli.add_command(check_videos_command)
