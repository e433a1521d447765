"""Momentum encoder, queue, the simclr/moco tasks through the PretextTask contract, checkpoints."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from hcframe import get_registry
from hcframe.engine.model import MultiTaskModel
from hcframe_contrastive import MoCoTask, MomentumEncoder, NegativeQueue, SimCLRTask, momentum_at

B = 6


def structured_views(step: int, batch: int = B, videos: int = 8):
    """Two views of ``batch`` of ``videos`` synthetic videos: each video is a coloured texture
    drifting one pixel per frame; the views start at different random times and get independent
    noise and brightness."""
    g = torch.Generator().manual_seed(1000 + step)
    ids = torch.randperm(videos, generator=g)[:batch]
    base = torch.Generator().manual_seed(0)
    textures = torch.randn(videos, 3, 8, 8, generator=base)
    frames = torch.stack([textures.roll(t, dims=-1) for t in range(10)], dim=2)   # [V, 3, 10, 8, 8]
    views = []
    for _ in range(2):
        starts = torch.randint(0, 10 - 4 + 1, (batch,), generator=g)
        clips = torch.stack([frames[i, :, s : s + 4] for i, s in zip(ids.tolist(), starts.tolist())])
        gain = 1 + 0.2 * torch.randn(batch, 1, 1, 1, 1, generator=g)
        views.append(clips * gain + 0.5 * torch.randn(clips.shape, generator=g))
    return views


# --- momentum ----------------------------------------------------------------------------------
def test_momentum_schedules():
    assert momentum_at(0, 100, 0.99) == 0.99
    assert momentum_at(73, 100, 0.99, "constant") == 0.99
    assert momentum_at(0, 100, 0.99, "cosine") == pytest.approx(0.99)
    assert momentum_at(50, 100, 0.99, "cosine") == pytest.approx(0.995)
    assert momentum_at(100, 100, 0.99, "cosine") == pytest.approx(1.0)
    assert momentum_at(25, 100, 0.9, "cosine") == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)
    with pytest.raises(ValueError, match="schedule"):
        momentum_at(0, 10, 0.99, "linear")
    with pytest.raises(ValueError, match="momentum"):
        momentum_at(0, 10, 1.5)


def test_momentum_encoder_follows_the_ema_rule_exactly():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    key = MomentumEncoder(online)
    assert all(not p.requires_grad for p in key.parameters())
    with torch.no_grad():  # the online module moves away (as after optimiser steps)
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online(torch.randn(8, 4))  # new running statistics
    old = [p.clone() for p in key.parameters()]
    m = 0.93
    key.update(online, m)
    for k, o, before in zip(key.parameters(), online.parameters(), old):
        assert torch.equal(k, before * m + o.detach() * (1 - m))
        expected64 = before.double() * m + o.detach().double() * (1 - m)
        torch.testing.assert_close(k.double(), expected64, rtol=0, atol=1e-6)
        assert not torch.equal(k, before)
    for kb, ob in zip(key.buffers(), online.buffers()):
        assert torch.equal(kb, ob)
    key.reset(online)
    for k, o in zip(key.parameters(), online.parameters()):
        assert torch.equal(k, o)
    with pytest.raises(ValueError, match="structure"):
        key.update(nn.Linear(4, 5), 0.9)


# --- queue -------------------------------------------------------------------------------------
def test_queue_order_wrap_and_fill():
    queue = NegativeQueue(dim=2, size=5, seed=3)
    initial = queue.keys.clone()
    torch.testing.assert_close(initial.norm(dim=1), torch.ones(5))
    assert torch.equal(NegativeQueue(2, 5, seed=3).keys, initial)  # deterministic initialisation
    rows = torch.arange(20, dtype=torch.float32).view(10, 2)
    queue.enqueue(rows[:3])
    assert queue.fill_fraction() == pytest.approx(0.6) and int(queue.ptr) == 3
    assert torch.equal(queue.ordered(), rows[:3])
    assert torch.equal(queue.negatives()[3:], initial[3:])  # the random entries are still there
    assert queue.negatives(only_filled=True).shape == (3, 2)
    queue.enqueue(rows[3:6])  # wraps: row 5 overwrites the oldest entry (row 0)
    assert int(queue.ptr) == 1 and int(queue.filled) == 5
    assert torch.equal(queue.ordered(), rows[1:6])
    assert torch.equal(queue.keys[0], rows[5])
    queue.enqueue(rows[6:8])
    assert torch.equal(queue.ordered(), rows[3:8])
    queue.enqueue(rows[:7])  # more than the queue holds: only the newest 5 stay, in order
    assert torch.equal(queue.ordered(), rows[2:7])
    negatives = queue.negatives()
    queue.enqueue(rows[8:9])
    assert not torch.equal(negatives, queue.keys)  # negatives() is a copy
    with pytest.raises(ValueError, match="keys must be"):
        queue.enqueue(torch.zeros(2, 3))


# --- tasks through the contract ----------------------------------------------------------------
def _setup(task, encoder_factory, seed=0):
    torch.manual_seed(seed)
    encoder = encoder_factory()
    task.setup(encoder, encoder.feature_dim)
    return encoder, task


@pytest.mark.parametrize("negatives", ["both_views", "cross_view"])
def test_simclr_forward_backward_and_accuracy(tiny_encoder_factory, make_task_input, negatives):
    encoder, task = _setup(SimCLRTask(hidden_dim=16, out_dim=8, negatives=negatives), tiny_encoder_factory)
    views = [v.requires_grad_() for v in structured_views(0)]
    inp = make_task_input(encoder, views)
    out = task(inp)
    assert set(out.losses) == {"nce"} and set(out.metrics) == {"acc", "pos_sim", "neg_sim"}
    out.total.backward()
    for v in views:  # gradients reach the clips of both views
        assert v.grad is not None and v.grad.abs().sum() > 0
    assert all(p.grad is not None for p in encoder.parameters())
    with torch.no_grad():  # metrics by hand from the 2B embeddings
        emb = task.head(torch.cat([f.pooled for f in inp.features]))
        sims = emb @ emb.t()
        positive = torch.cat([torch.arange(B, 2 * B), torch.arange(B)])
        rows = torch.arange(2 * B)
        if negatives == "both_views":  # candidates: every other embedding, both views
            candidate = ~torch.eye(2 * B, dtype=torch.bool)
        else:  # candidates: the other view only
            candidate = torch.zeros(2 * B, 2 * B, dtype=torch.bool)
            candidate[:B, B:] = True
            candidate[B:, :B] = True
        masked = sims.masked_fill(~candidate, float("-inf"))
        manual_acc = (masked.argmax(1) == positive).float().mean()
        negative = candidate.clone()
        negative[rows, positive] = False
    assert out.metrics["acc"].item() == pytest.approx(manual_acc.item())
    assert out.metrics["pos_sim"].item() == pytest.approx(sims[rows, positive].mean().item(), abs=1e-6)
    assert out.metrics["neg_sim"].item() == pytest.approx(sims[negative].mean().item(), abs=1e-6)


def test_simclr_negatives_option_checked_and_changes_the_loss(tiny_encoder_factory, make_task_input):
    assert SimCLRTask().negatives == "both_views"
    with pytest.raises(ValueError, match="negatives must be one of both_views, cross_view"):
        SimCLRTask(negatives="queue")
    with pytest.raises(ValueError, match="symmetric = false applies only to negatives = 'cross_view'"):
        SimCLRTask(symmetric=False)
    SimCLRTask(negatives="cross_view", symmetric=False)
    losses = {}
    for negatives in ("both_views", "cross_view"):
        encoder, task = _setup(SimCLRTask(hidden_dim=16, out_dim=8, negatives=negatives), tiny_encoder_factory)
        losses[negatives] = task(make_task_input(encoder, structured_views(0))).total.item()
    # same weights and clips: NT-Xent has B - 1 more negatives per anchor, so a larger loss
    assert losses["both_views"] > losses["cross_view"] + 0.1, losses


@pytest.mark.parametrize("negatives", ["both_views", "cross_view"])
def test_simclr_batch_of_one_clip_warns_once_and_logs_no_accuracy(tiny_encoder_factory, make_task_input, negatives):
    # Unreadable videos dropped from a batch can leave one clip: only the positive, no negative.
    encoder, task = _setup(SimCLRTask(hidden_dim=16, out_dim=8, negatives=negatives), tiny_encoder_factory)
    one = [v[:1] for v in structured_views(0)]
    with pytest.warns(RuntimeWarning, match="simclr: a batch held a single clip") as caught:
        out = task(make_task_input(encoder, one))
        task(make_task_input(encoder, one))
    assert len(caught) == 1  # once per task, not once per step
    assert len(str(caught[0].message).splitlines()) == 1
    # The softmax over a single candidate is 1: the loss is exactly 0 and nothing is learnt.
    assert out.losses["nce"].item() == 0.0 and out.metrics == {}
    two = task(make_task_input(encoder, [v[:2] for v in structured_views(0)]))
    assert set(two.metrics) == {"acc", "pos_sim", "neg_sim"}  # two clips have negatives again
    assert SimCLRTask.min_batch_size == 2  # a recipe with train.batch_size = 1 is refused


def _moco(**kw):
    args = dict(queue_size=16, hidden_dim=16, out_dim=8, momentum=0.9)
    args.update(kw)
    return MoCoTask(**args)


def test_moco_step_ema_no_key_gradient_and_queue(tiny_encoder_factory, make_task_input):
    encoder, task = _setup(_moco(), tiny_encoder_factory)
    online = list(encoder.parameters()) + list(task.head.parameters())
    optimiser = torch.optim.SGD(online, lr=0.5)
    for step in range(3):
        views = structured_views(step)
        old_key = [p.clone() for p in task.key_encoder.parameters()] + [p.clone() for p in task.key_head.parameters()]
        negatives_before = task.queue.negatives()
        inp = make_task_input(encoder, views, step=step)
        out = task(inp)
        # the key encoder moved by exactly the EMA rule towards the current online weights
        key_now = list(task.key_encoder.parameters()) + list(task.key_head.parameters())
        for k, before, o in zip(key_now, old_key, online):
            assert torch.equal(k, before * 0.9 + o.detach() * (1 - 0.9))
        # loss: the queries against [their key, the queue as it was before this step]
        with torch.no_grad():
            keys = task.key_head(task.key_encoder(views[1]).pooled)
            queries = task.head(inp.features[0].pooled)
            sims = torch.cat([(queries * keys).sum(1, keepdim=True), queries @ negatives_before.t()], 1)
        log_softmax = sims / 0.07 - torch.logsumexp(sims / 0.07, dim=1, keepdim=True)
        assert out.losses["nce"].item() == pytest.approx(-log_softmax[:, 0].mean().item(), rel=1e-5)
        assert out.metrics["acc"].item() == pytest.approx((sims.argmax(1) == 0).float().mean().item())
        # the keys were enqueued after the loss
        assert torch.equal(task.queue.ordered()[-B:], keys)
        assert out.metrics["queue_fill"] == pytest.approx(min((step + 1) * B, 16) / 16)
        optimiser.zero_grad()
        out.total.backward()
        assert all(p.grad is None for p in task.key_encoder.parameters())
        assert all(p.grad is None for p in task.key_head.parameters())
        assert all(p.grad is not None for p in encoder.parameters())
        optimiser.step()


def test_moco_symmetric_and_eval_mode(tiny_encoder_factory, make_task_input):
    encoder, task = _setup(_moco(symmetric=True), tiny_encoder_factory)
    views = [v.requires_grad_() for v in structured_views(0)]
    out = task(make_task_input(encoder, views))
    out.total.backward()
    assert all(v.grad.abs().sum() > 0 for v in views)  # both views are queries
    task.eval()
    state = {k: v.clone() for k, v in task.state_dict().items()}
    task(make_task_input(encoder, structured_views(1), step=1))
    for name, value in task.state_dict().items():  # eval: no EMA update, no enqueue
        assert torch.equal(value, state[name]), name


def test_moco_running_stats_keys_use_eval_mode(tiny_encoder_factory, make_task_input):
    encoder, task = _setup(_moco(key_bn="running_stats"), tiny_encoder_factory)
    encoder(structured_views(5)[0])  # online running statistics differ from the initial ones
    views = structured_views(0)
    task(make_task_input(encoder, views))
    assert task.key_encoder.training and task.key_head.training  # mode restored
    reference = copy.deepcopy(task.key_encoder).eval(), copy.deepcopy(task.key_head).eval()
    with torch.no_grad():
        expected = reference[1](reference[0](views[1]).pooled)
    assert torch.equal(task.queue.ordered(), expected)


def _train_steps(encoder, task, optimiser, steps, make_task_input):
    losses = []
    for step in steps:
        out = task(make_task_input(encoder, structured_views(step), step=step, max_steps=8))
        optimiser.zero_grad()
        out.total.backward()
        optimiser.step()
        losses.append(out.total.detach())
    return losses


def _build_moco_run(encoder_factory, seed):
    encoder, task = _setup(_moco(momentum_schedule="cosine"), encoder_factory, seed=seed)
    params = [p for p in list(encoder.parameters()) + list(task.parameters()) if p.requires_grad]
    return encoder, task, torch.optim.SGD(params, lr=0.1, momentum=0.9)


def test_moco_checkpoint_resume_is_exact(tiny_encoder_factory, make_task_input, tmp_path):
    encoder, task, optimiser = _build_moco_run(tiny_encoder_factory, seed=0)
    _train_steps(encoder, task, optimiser, range(3), make_task_input)
    torch.save(
        {"encoder": encoder.state_dict(), "task": task.state_dict(), "optimiser": optimiser.state_dict()},
        tmp_path / "ckpt.pt",
    )
    assert {"queue.keys", "queue.ptr", "queue.filled"} <= set(task.state_dict())
    assert any(k.startswith("key_encoder.") for k in task.state_dict())
    (loss_a,) = _train_steps(encoder, task, optimiser, [3], make_task_input)

    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    encoder_b, task_b, optimiser_b = _build_moco_run(tiny_encoder_factory, seed=1)
    assert not torch.equal(task_b.queue.negatives(), state["task"]["queue.keys"])
    encoder_b.load_state_dict(state["encoder"])
    task_b.load_state_dict(state["task"])
    optimiser_b.load_state_dict(state["optimiser"])
    assert torch.equal(task_b.queue.keys, state["task"]["queue.keys"])
    (loss_b,) = _train_steps(encoder_b, task_b, optimiser_b, [3], make_task_input)
    assert torch.equal(loss_a, loss_b)
    for (name, a), (_, b) in zip(task.state_dict().items(), task_b.state_dict().items()):
        assert torch.equal(a, b), name
    for (name, a), (_, b) in zip(encoder.state_dict().items(), encoder_b.state_dict().items()):
        assert torch.equal(a, b), name


def test_simclr_accuracy_rises_on_structured_videos(tiny_encoder_factory, make_task_input):
    """40 steps on batches of 12 out of 256 drifting-texture videos: the instance accuracy (chance
    1/12) rises well above chance. (MoCo's rise needs a longer run: the engine recipe checks it.)"""
    encoder, task = _setup(SimCLRTask(hidden_dim=32, out_dim=16), tiny_encoder_factory)
    params = [p for p in list(encoder.parameters()) + list(task.parameters()) if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=1e-2)
    accs = []
    for step in range(40):
        views = structured_views(step, batch=12, videos=256)
        out = task(make_task_input(encoder, views, step=step, max_steps=40))
        optimiser.zero_grad()
        out.total.backward()
        optimiser.step()
        accs.append(out.metrics["acc"].item())
    first, last = sum(accs[:5]) / 5, sum(accs[-10:]) / 10
    assert last > 0.5 and last > first + 0.15, (first, last)


# --- registry and the engine -------------------------------------------------------------------
def test_registered_and_arguments_checked():
    registry = get_registry()
    assert isinstance(registry.create("task", "simclr"), SimCLRTask)
    moco = registry.create("task", "moco", queue_size=2048)
    assert (moco.temperature, moco.queue_size, moco.num_views) == (0.07, 2048, 2)
    assert SimCLRTask().temperature == 0.1 and MoCoTask().queue_size == 16384
    assert registry.create("head", "projection_mlp", in_dim=4)(torch.randn(3, 4)).shape == (3, 128)
    for kwargs, word in (({"queue_size": 0}, "queue_size"), ({"momentum": 1.2}, "momentum"), ({"key_bn": "x"}, "key_bn"), ({"temperature": -1.0}, "temperature")):
        with pytest.raises(ValueError, match=word):
            MoCoTask(**kwargs)


def test_tasks_in_the_engines_multi_task_model(tiny_encoder_factory):
    torch.manual_seed(0)
    tasks = {"simclr": SimCLRTask(hidden_dim=16, out_dim=8), "moco": _moco()}
    model = MultiTaskModel(tiny_encoder_factory(), tasks, split="stage1")
    moco = model.tasks["moco"]
    # the key encoder is a copy of the trunk and moco's own branch, none of the simclr branch
    n_key = sum(p.numel() for p in moco.key_encoder.parameters())
    n_online = sum(p.numel() for p in model.trunk.parameters()) + sum(p.numel() for p in model.branches["moco"].parameters())
    assert n_key == n_online
    assert not any(p is q for p in moco.parameters() for q in model.trunk.parameters())
    total, outputs, _ = model({"views": structured_views(0)}, step=0, max_steps=4)
    total.backward()
    assert set(outputs) == {"simclr", "moco"}
    assert outputs["moco"].metrics["queue_fill"] == pytest.approx(B / 16)
    assert all(p.grad is not None for p in model.branches["moco"].parameters())
    assert all(p.grad is None for p in moco.key_encoder.parameters())


# --- foreground pooling (pool = "foreground") ----------------------------------------------------
def test_foreground_pool_is_the_person_weighted_mean_of_the_cells():
    import numpy as np

    from hcframe_contrastive import foreground_pool

    g = torch.Generator().manual_seed(3)
    fmap = torch.randn(2, 5, 2, 4, 4, generator=g, dtype=torch.float64)
    parts = torch.softmax(torch.randn(2, 4, 8, 8, 8, generator=g, dtype=torch.float64), dim=1)
    parts[1] = 0.0
    parts[1, 0] = 1.0  # clip 1: background everywhere
    got = foreground_pool(fmap, parts).numpy()
    p, f = parts.numpy(), fmap.numpy()
    for b in range(2):
        # each map cell covers 4 x 2 x 2 part cells; its weight is the mean person share there
        person = (1.0 - p[b, 0]).reshape(2, 4, 4, 2, 4, 2).mean(axis=(1, 3, 5)) + 1e-4
        expected = (f[b] * person).sum(axis=(1, 2, 3)) / person.sum()
        np.testing.assert_allclose(got[b], expected, rtol=1e-5, atol=1e-7)  # float32 sums
    np.testing.assert_allclose(got[1], f[1].mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-7)  # no person: the plain mean
    # a person in one corner only: the pooled vector is that corner's features
    corner = torch.zeros(1, 4, 8, 8, 8, dtype=torch.float64)
    corner[:, 0] = 1.0
    corner[:, 0, 4:, :2, :2], corner[:, 2, 4:, :2, :2] = 0.0, 1.0
    np.testing.assert_allclose(foreground_pool(fmap[:1], corner)[0].numpy(), f[0, :, 1, 0, 0], rtol=1e-2)  # up to the floor of the 31 empty cells


def test_simclr_foreground_pool_reads_the_part_maps_and_refuses_a_batch_without_them(tiny_encoder_factory, make_task_input):
    with pytest.raises(ValueError, match="pool must be one of mean, foreground"):
        SimCLRTask(pool="person")
    encoder, task = _setup(SimCLRTask(hidden_dim=16, out_dim=8, pool="foreground"), tiny_encoder_factory)
    views = structured_views(0)
    with pytest.raises(ValueError, match="pool = \"foreground\" weights the features by the part maps"):
        task(make_task_input(encoder, views))
    g = torch.Generator().manual_seed(0)
    parts = [torch.softmax(torch.randn(B, 3, 8, 8, 8, generator=g), dim=1) for _ in views]
    inp = make_task_input(encoder, views)
    inp.batch["parts"] = parts
    out = task(inp)
    out.total.backward()
    assert torch.isfinite(out.total) and all(p.grad is not None for p in encoder.parameters())
    _, mean_task = _setup(SimCLRTask(hidden_dim=16, out_dim=8), tiny_encoder_factory)
    assert abs(mean_task(make_task_input(encoder, views)).total.item() - out.total.item()) > 1e-4  # not the plain mean
