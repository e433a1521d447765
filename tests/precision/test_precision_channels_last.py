"""``channels_last_3d`` (``train.channels_last``) computes what the contiguous layout computes.

The two layouts run different convolution, batch-norm and pooling kernels, which add in different
orders, so results agree to float32 rounding as the network propagates it. Bounds, relative to the
largest value of each compared quantity (measured on this machine in brackets):

- evaluation mode, every encoder: feature map, pooled features, the gradient of the input and of
  all parameters within 1e-5 (at most 1.2e-6);
- training mode (batch statistics), every encoder but S3D: the same within 1e-4 (at most 1e-5),
  and the running statistics. S3D is left out here: 17 batch-normalised layers without residuals
  amplify rounding at random initialisation so much that a relative 1e-7 perturbation of its input
  moves its feature map by up to 3e-3 of its largest value (measured), and the layouts differ by
  that order, which no useful bound separates from a real difference;
- the trainer (quickstart recipe, R(2+1)D, training mode, learning rate lowered to 2e-4 as in
  test_precision_compile.py): the first step's logged losses within a relative 1e-5, the next two
  within 1e-3 (the weights differ by then).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from hcframe.engine.trainer import Trainer
from hcframe.recipe import load_recipe

from precision_helpers import ENCODERS, quickstart_overrides

CL = torch.channels_last_3d


def _close(value: torch.Tensor, reference: torch.Tensor, bound: float) -> None:
    torch.testing.assert_close(value, reference, rtol=0, atol=bound * float(reference.abs().max()))


def _forward_backward(encoder, clips) -> dict[str, torch.Tensor]:
    clips = clips.clone().requires_grad_(True)
    out = encoder(clips)
    g = torch.Generator().manual_seed(1)  # a fixed random direction: sums of BN outputs have no gradient
    loss = (out.feature_map * torch.randn(out.feature_map.shape, generator=g)).sum() + (out.pooled * torch.randn(out.pooled.shape, generator=g)).sum()
    loss.backward()
    return {
        "feature_map": out.feature_map.detach(),
        "pooled": out.pooled.detach(),
        "input_grad": clips.grad,
        "param_grads": torch.cat([p.grad.flatten() for p in encoder.parameters()]),
        "buffers": torch.cat([b.flatten() for b in encoder.buffers() if b.is_floating_point()] or [torch.zeros(1)]),
    }


def _compare(encoder: str, training: bool, bound: float) -> None:
    factory, _ = ENCODERS[encoder]
    torch.manual_seed(0)
    contiguous = factory().train(training)
    channels_last = copy.deepcopy(contiguous).to(memory_format=CL)
    size = 32 if encoder.startswith("s3d") else 16  # S3D: a 2x2 map after block5
    clips = torch.randn(4, 3, 8, size, size)
    reference = _forward_backward(contiguous, clips)
    result = _forward_backward(channels_last, clips.contiguous(memory_format=CL))
    for key, value in reference.items():
        _close(result[key], value, bound)


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_channels_last_3d_equals_contiguous_in_evaluation(encoder):
    _compare(encoder, training=False, bound=1e-5)


@pytest.mark.parametrize("encoder", sorted(e for e in ENCODERS if not e.startswith("s3d")))
def test_channels_last_3d_equals_contiguous_in_training(encoder):
    _compare(encoder, training=True, bound=1e-4)


def test_trainer_channels_last_equals_contiguous(small_world, tmp_path):
    """The quickstart recipe, 3 steps with ``train.channels_last`` on and off."""
    records = {}
    for layout in ("on", "off"):
        recipe = load_recipe("examples/quickstart.toml", [*quickstart_overrides(small_world), "optim.lr=0.0002", f"train.channels_last={layout}"])
        Trainer(recipe, tmp_path / layout, log=lambda m: None).train()
        records[layout] = [json.loads(line) for line in (tmp_path / layout / "metrics.jsonl").read_text().splitlines()]
    assert len(records["on"]) == 3
    for got, ref in zip(records["on"], records["off"]):
        for key, value in ref.items():
            if key == "loss" or key.endswith(("/nce", "/distill", "/ce")):
                assert got[key] == pytest.approx(value, rel=1e-5 if got["step"] == 1 else 1e-3), (got["step"], key)
