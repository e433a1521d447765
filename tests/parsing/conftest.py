"""Fixtures for the parsing plugin tests (helpers live in parsing_helpers.py)."""

from pathlib import Path

import pytest

from parsing_helpers import make_video_folder, save_tiny_parser


@pytest.fixture
def tiny_parser_file(tmp_path: Path):
    def make(num_classes: int = 4, seed: int = 0, name: str = "parser.pt") -> Path:
        return save_tiny_parser(tmp_path / name, num_classes, seed)

    return make


@pytest.fixture
def video_folder(tmp_path: Path) -> Path:
    return make_video_folder(tmp_path / "videos")
