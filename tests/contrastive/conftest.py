"""Shared helpers for the contrastive plugin's tests: a tiny video encoder and task inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hcframe import Encoder, TaskInput


class TinyVideoEncoder(Encoder):
    """Two Conv3d stages with batch norm: [B, 3, T, H, W] -> [B, 16, ...]."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleDict(
            {
                "stem": nn.Sequential(nn.Conv3d(3, 8, 3, padding=1, bias=False), nn.BatchNorm3d(8), nn.ReLU()),
                "stage1": nn.Sequential(nn.Conv3d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm3d(16), nn.ReLU()),
            }
        )
        self.feature_dim = 16


def task_input(encoder: nn.Module, views: list[torch.Tensor], step: int = 0, max_steps: int = 10) -> TaskInput:
    """What the engine hands a task: online features of every view, computed with gradients."""
    return TaskInput(
        batch={"views": views},
        features=[encoder(v) for v in views],
        encoder=encoder,
        step=step,
        max_steps=max_steps,
    )


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Every test here runs on one intra-op thread (tests/conftest.py)."""
    yield


@pytest.fixture
def tiny_encoder_factory():
    return TinyVideoEncoder


@pytest.fixture
def make_task_input():
    return task_input
