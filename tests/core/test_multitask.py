"""Task-dependent branches, the loss combiner, gradient cosines and PCGrad."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hcframe.components import PretextTask, TaskOutput
from hcframe.engine.combiner import TaskCombiner, gradient_cosines, pcgrad_combine
from hcframe.engine.model import MultiTaskModel
from hcframe_testkit import TinyEncoder


class PooledSum(PretextTask):
    """Loss = scale * sum of this task's pooled features of view 0 (a known gradient)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, inp):
        return TaskOutput({"sum": self.scale * inp.features[0].pooled.sum()})


def _batch():
    torch.manual_seed(1)
    return {"views": [torch.randn(2, 3, 4, 16, 16)]}


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}


def _single_task_grads(model, batch, task):
    _, outputs, _ = model(batch)
    return _grads(model, outputs[task].total)


def test_split_at_last_stage_branch_gets_only_its_task_gradient_and_trunk_gets_the_sum():
    torch.manual_seed(0)
    model = MultiTaskModel(TinyEncoder(), {"a": PooledSum(1.0), "b": PooledSum(-3.0)}, split="layer2")
    assert list(model.trunk.stages) == ["stem", "layer1"]
    assert all(list(b.stages) == ["layer2"] for b in model.branches.values())
    batch = _batch()
    total, _, _ = model(batch)
    both = _grads(model, total)
    only_a = _single_task_grads(model, batch, "a")
    only_b = _single_task_grads(model, batch, "b")
    for name, g in both.items():
        if name.startswith("branches.a."):
            assert torch.equal(g, only_a[name]) and only_b[name] is None
        elif name.startswith("branches.b."):
            assert torch.equal(g, only_b[name]) and only_a[name] is None
        elif name.startswith("trunk."):
            assert only_a[name].abs().sum() > 0 and only_b[name].abs().sum() > 0
            torch.testing.assert_close(g, only_a[name] + only_b[name], rtol=1e-5, atol=1e-6)
    # The branches start as identical copies but are separate parameters.
    a, b = model.branches["a"].stages["layer2"][0].weight, model.branches["b"].stages["layer2"][0].weight
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_split_none_shares_every_parameter():
    torch.manual_seed(0)
    model = MultiTaskModel(TinyEncoder(), {"a": PooledSum(1.0), "b": PooledSum(-3.0)}, split="none")
    assert all(len(b.stages) == 0 for b in model.branches.values())
    batch = _batch()
    total, _, _ = model(batch)
    both = _grads(model, total)
    only_a = _single_task_grads(model, batch, "a")
    only_b = _single_task_grads(model, batch, "b")
    for name, g in both.items():
        torch.testing.assert_close(g, only_a[name] + only_b[name], rtol=1e-5, atol=1e-6)
    # Both tasks see the same representation.
    x = batch["views"][0]
    assert torch.equal(model.encode(x, "a"), model.encode(x, "b"))
    assert model.encode(x, "concat").shape == (2, model.feature_dim)


def test_unknown_split_names_the_stages():
    with pytest.raises(ValueError, match="stages are stem, layer1, layer2"):
        MultiTaskModel(TinyEncoder(), {"a": PooledSum(1.0)}, split="layer9")


def test_concat_representation_joins_the_branches():
    model = MultiTaskModel(TinyEncoder(), {"a": PooledSum(1.0), "b": PooledSum(1.0)}, split="layer1")
    x = _batch()["views"][0]
    both = model.encode(x, "concat")
    assert both.shape == (2, 2 * model.feature_dim) == (2, model.representation_dim("concat"))
    assert torch.equal(both[:, : model.feature_dim], model.encode(x, "a"))


def test_uncertainty_weighting_matches_kendall_formula():
    combiner = TaskCombiner(["a", "b"], weights={"a": 1.0, "b": 0.5}, weighting="uncertainty")
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(4.0)}
    total, parts = combiner(losses)
    s = combiner.log_vars.detach()
    assert math.isclose(float(s[1]), -math.log(0.5), rel_tol=1e-6)  # starts at the fixed weight
    expected = math.exp(-s[0]) * 2.0 + s[0] + math.exp(-s[1]) * 4.0 + s[1]
    assert math.isclose(float(total.detach()), float(expected), rel_tol=1e-6)
    total.backward()
    # d/ds (e^-s L + s) = 1 - e^-s L
    torch.testing.assert_close(combiner.log_vars.grad, 1 - torch.exp(-s) * torch.tensor([2.0, 4.0]))


def test_gradient_cosine_equals_manual_computation():
    w = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    la = (w * torch.tensor([1.0, 0.0, 1.0])).sum()
    lb = (w**2).sum()  # gradient 2w
    cos = gradient_cosines({"a": la, "b": lb}, [w])["a~b"]
    ga, gb = torch.tensor([1.0, 0.0, 1.0]), 2 * w.detach()
    assert math.isclose(cos, float(ga @ gb / (ga.norm() * gb.norm())), rel_tol=1e-6)


def test_pcgrad_projects_only_conflicting_gradients():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])  # conflicting: dot = -1
    out = pcgrad_combine({"a": g1, "b": g2})
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2  # [0.5, 0.5]
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1  # [0, 1]
    torch.testing.assert_close(out, p1 + p2)
    aligned = pcgrad_combine({"a": g1, "b": torch.tensor([1.0, 1.0])})
    torch.testing.assert_close(aligned, torch.tensor([2.0, 1.0]))  # no conflict: plain sum


def test_shared_grad_scale_limits_a_task_to_its_branch():
    batch = _batch()
    torch.manual_seed(0)
    full = MultiTaskModel(TinyEncoder(), {"a": PooledSum(1.0), "b": PooledSum(-3.0)}, split="layer2")
    only_a = _single_task_grads(full, batch, "a")
    only_b = _single_task_grads(full, batch, "b")
    for scale in (0.0, 0.5):
        torch.manual_seed(0)
        combiner = TaskCombiner(["a", "b"], shared_grad_scale={"b": scale})
        model = MultiTaskModel(TinyEncoder(), {"a": PooledSum(1.0), "b": PooledSum(-3.0)}, split="layer2", combiner=combiner)
        total, _, _ = model(batch)
        grads = _grads(model, total)
        for name, g in grads.items():
            if name.startswith("trunk."):
                torch.testing.assert_close(g, only_a[name] + scale * only_b[name], rtol=1e-5, atol=1e-6)
            elif name.startswith("branches.b."):  # the branch itself still learns from its task
                torch.testing.assert_close(g, only_b[name], rtol=1e-5, atol=1e-6)


def test_online_probe_reads_a_branch_detached_and_trains_only_itself():
    from hcframe.heads import OnlineLinearProbe

    batch = {**_batch(), "label": torch.tensor([0, 1])}
    torch.manual_seed(0)
    model = MultiTaskModel(
        TinyEncoder(), {"a": PooledSum(1.0), "b": PooledSum(-3.0), "probe": OnlineLinearProbe(num_classes=2)}, split="layer2"
    )
    assert set(model.branches) == {"a", "b"}  # the probe owns no branch
    assert model.tasks["probe"].head.fc.in_features == 2 * model.feature_dim  # reads the concatenation
    _, outputs, _ = model(batch)
    grads = _grads(model, outputs["probe"].total)
    for name, g in grads.items():
        if name.startswith("tasks.probe."):
            assert g is not None and g.abs().sum() > 0
        else:
            assert g is None or g.abs().sum() == 0, name
    # Its logits are the linear head on the concatenated pooled features of view 0.
    x = batch["views"][0]
    expected = model.tasks["probe"].head(model.encode(x, "concat"))
    loss = torch.nn.functional.cross_entropy(expected, batch["label"])
    torch.testing.assert_close(outputs["probe"].total, loss)
    with pytest.raises(ValueError, match="reads branch 'c'"):
        MultiTaskModel(TinyEncoder(), {"a": PooledSum(1.0), "probe": OnlineLinearProbe(2, branch="c")}, split="layer2")
