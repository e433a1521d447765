"""Two gloo processes against one process on the same global batch.

The workers run every distributed check in one spawn (process start-up dominates the cost) and
save what they computed; the tests compare it with single-process computations and float64
references.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hcframe import TaskInput
from hcframe_contrastive import GlobalBatchNorm1d, MoCoTask, NegativeQueue, SimCLRTask, info_nce, nt_xent, shuffled_forward

WORLD = 2
BATCH = 4  # per rank
DIM = 6
TEMPERATURE = 0.1
SHUFFLE_SEED = 11
BN_ROWS = (3, 5)  # per-rank batch sizes of the global batch-norm check: ranks may differ
BN_CHANNELS = 4
NEGATIVES = ("both_views", "cross_view")


def global_data():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(WORLD * BATCH, DIM, generator=g, dtype=torch.float64)
    k = q + torch.randn(WORLD * BATCH, DIM, generator=g, dtype=torch.float64)
    x = torch.randn(WORLD * BATCH, DIM, generator=g, dtype=torch.float64) * 3 + 1
    features = torch.randn(2, WORLD * BATCH, 5, generator=g)
    return q, k, x, features


def bn_data():
    """Inputs of the global batch-norm check, an affine transform and per-entry loss weights."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(sum(BN_ROWS), BN_CHANNELS, generator=g, dtype=torch.float64) * 2 + 0.5
    weight = 1 + torch.rand(BN_CHANNELS, generator=g, dtype=torch.float64)
    bias = torch.randn(BN_CHANNELS, generator=g, dtype=torch.float64)
    loss_weights = torch.randn(sum(BN_ROWS), BN_CHANNELS, generator=g, dtype=torch.float64)
    return x, weight, bias, loss_weights


def bn_loss(out, loss_weights):
    """A loss that is a sum over rows (so the rank losses add up to the global one), nonlinear."""
    return (loss_weights * out + 0.3 * out**3).sum()


def make_global_bn(weight, bias):
    bn = GlobalBatchNorm1d(BN_CHANNELS, momentum=0.3).double()
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    return bn


class PooledOutput:
    def __init__(self, pooled):
        self.pooled = pooled


class LinearEncoder(nn.Module):
    """A clip 'encoder' on flat vectors, with batch norm, for the MoCo step across ranks."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 5), nn.BatchNorm1d(5))

    def forward(self, x):
        return PooledOutput(self.net(x))


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        q, k, x, features = global_data()
        local = slice(rank * BATCH, (rank + 1) * BATCH)
        result = {}
        for symmetric in (False, True):
            ql = q[local].clone().requires_grad_()
            kl = k[local].clone().requires_grad_()
            loss = info_nce(ql, kl, temperature=TEMPERATURE, symmetric=symmetric, gather=True)
            loss.backward()
            result[f"loss_{symmetric}"] = loss.detach()
            result[f"grad_q_{symmetric}"] = ql.grad
            result[f"grad_k_{symmetric}"] = kl.grad

        queue = NegativeQueue(DIM, size=6)
        queue.enqueue(k[local])
        queue.enqueue(q[local])
        result["queue_keys"] = queue.keys.clone()
        result["queue_ptr"] = queue.ptr.clone()

        bn = nn.BatchNorm1d(DIM, affine=False).double()
        result["shuffled"] = shuffled_forward(bn, x[local], seed=SHUFFLE_SEED)

        # NT-Xent over the gathered global batch, both views as negatives
        ql = q[local].clone().requires_grad_()
        kl = k[local].clone().requires_grad_()
        loss = nt_xent(ql, kl, TEMPERATURE)
        loss.backward()
        result["nt_xent_loss"] = loss.detach()
        result["nt_xent_grads"] = [ql.grad, kl.grad]

        # Global batch norm, ranks holding different batch sizes
        bx, bw, bb, blw = bn_data()
        rows = slice(sum(BN_ROWS[:rank]), sum(BN_ROWS[: rank + 1]))
        bn = make_global_bn(bw, bb)
        xl = bx[rows].clone().requires_grad_()
        out = bn(xl)
        bn_loss(out, blw[rows]).backward()
        result["bn_out"] = out.detach()
        result["bn_grads"] = [xl.grad, bn.weight.grad, bn.bias.grad]
        result["bn_running"] = [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]
        bn.eval()
        result["bn_eval_out"] = bn(bx[rows]).detach()
        try:  # why GlobalBatchNorm1d exists: PyTorch's SyncBatchNorm refuses CPU tensors here
            nn.SyncBatchNorm(BN_CHANNELS).double()(bx[rows])
            result["torch_sync_bn_error"] = ""
        except ValueError as exc:
            result["torch_sync_bn_error"] = str(exc)

        # SimCLR task with batch norm in the head (global across ranks): the same loss and head
        # gradient as 1 process, for both forms of negatives
        for negatives in NEGATIVES:
            torch.manual_seed(5)
            simclr = SimCLRTask(temperature=TEMPERATURE, negatives=negatives, hidden_dim=8, out_dim=4)
            simclr.setup(nn.Identity(), 5)
            views = [features[0][local].clone().requires_grad_(), features[1][local].clone().requires_grad_()]
            out = simclr(TaskInput({"views": views}, [PooledOutput(v) for v in views], nn.Identity(), 0, 1))
            out.total.backward()
            result[f"simclr_loss_{negatives}"] = out.total.detach()
            result[f"simclr_head_grads_{negatives}"] = [p.grad.clone() for p in simclr.parameters()]
            result[f"simclr_view_grads_{negatives}"] = [v.grad.clone() for v in views]
            result[f"simclr_running_{negatives}"] = [b.clone() for b in simclr.buffers()]

        # One MoCo step: the queue and the key encoder end identical on both ranks
        torch.manual_seed(5)
        encoder = LinearEncoder()
        moco = MoCoTask(queue_size=10, hidden_dim=8, out_dim=4)
        moco.setup(encoder, 5)
        fv = [features[0][local], features[1][local]]
        moco(TaskInput({"views": fv}, [encoder(v) for v in fv], encoder, 0, 5))
        result["moco_queue"] = moco.queue.ordered()
        # parameters only: the key encoder's BN running statistics follow its local (shuffled)
        # sub-batch and are replaced by the online encoder's at the next momentum update
        result["moco_key_state"] = {n: t.clone() for n, t in moco.key_encoder.named_parameters()}
        sync = MoCoTask(queue_size=10, hidden_dim=8, out_dim=4, key_bn="sync")
        sync.setup(encoder, 5)
        try:
            sync.keys(fv[1], 0)
            result["sync_error"] = ""
        except ValueError as exc:
            result["sync_error"] = str(exc)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _reference_loss(q, k, temperature, symmetric):
    """Float64 InfoNCE over the global batch with explicit loops (independent of the plugin)."""

    def unit(r):
        n = math.sqrt(sum(v * v for v in r))
        return [v / n for v in r]

    qs, ks = [unit(r) for r in q.tolist()], [unit(r) for r in k.tolist()]

    def direction(a, b):
        total = 0.0
        for i, row in enumerate(a):
            logits = [sum(x * y for x, y in zip(row, c)) / temperature for c in b]
            total += math.log(sum(math.exp(v) for v in logits)) - logits[i]
        return total / len(a)

    forward = direction(qs, ks)
    return 0.5 * (forward + direction(ks, qs)) if symmetric else forward


@pytest.mark.parametrize("symmetric", [False, True])
def test_gathered_loss_equals_single_process_and_reference(ranks, symmetric):
    q, k, _, _ = global_data()
    qg, kg = q.clone().requires_grad_(), k.clone().requires_grad_()
    global_loss = info_nce(qg, kg, temperature=TEMPERATURE, symmetric=symmetric)
    global_loss.backward()
    reference = _reference_loss(q, k, TEMPERATURE, symmetric)
    rank_losses = [r[f"loss_{symmetric}"].item() for r in ranks]
    # each rank sees its own queries against every rank's keys: the rank losses differ ...
    assert rank_losses[0] != pytest.approx(rank_losses[1], rel=1e-6)
    # ... and their mean (what DDP optimises) is the global loss
    assert sum(rank_losses) / WORLD == pytest.approx(reference, rel=1e-12)
    assert global_loss.item() == pytest.approx(reference, rel=1e-12)
    for r, result in enumerate(ranks):
        local = slice(r * BATCH, (r + 1) * BATCH)
        for name, grad in (("q", qg.grad), ("k", kg.grad)):
            rank_grad = result[f"grad_{name}_{symmetric}"]
            assert rank_grad.abs().sum() > 0
            # DDP averages over ranks: the gradient of the local samples, divided by the world size
            torch.testing.assert_close(rank_grad / WORLD, grad[local], rtol=1e-10, atol=1e-13)


def test_without_gather_ranks_only_see_local_negatives(ranks):
    q, k, _, _ = global_data()
    local_losses = [info_nce(q[s], k[s], temperature=TEMPERATURE) for s in (slice(0, BATCH), slice(BATCH, None))]
    gathered = [r["loss_False"] for r in ranks]
    # gathering adds negatives: the loss must change (a no-op gather would fail this)
    for a, b in zip(local_losses, gathered):
        assert a.item() < b.item()


def test_queue_enqueues_keys_of_every_rank_in_rank_order(ranks):
    q, k, _, _ = global_data()
    expected_stream = torch.cat([k, q]).float()  # enqueue(k) then enqueue(q), rank order inside
    expected = expected_stream[-6:]
    for result in ranks:
        queue = NegativeQueue(DIM, size=6)
        queue.load_state_dict({"keys": result["queue_keys"], "ptr": result["queue_ptr"], "filled": torch.tensor(6)})
        assert torch.equal(queue.ordered(), expected)
    assert torch.equal(ranks[0]["queue_keys"], ranks[1]["queue_keys"])


def test_shuffled_batch_norm_uses_the_broadcast_permutation(ranks):
    _, _, x, _ = global_data()
    perm = torch.randperm(WORLD * BATCH, generator=torch.Generator().manual_seed(SHUFFLE_SEED))
    # the permutation must actually mix the ranks for this test to mean anything
    assert set(perm[:BATCH].tolist()) != set(range(BATCH))
    expected = torch.empty_like(x)
    for r in range(WORLD):
        rows = perm[r * BATCH : (r + 1) * BATCH]
        chunk = x[rows]
        mean = chunk.mean(0)
        var = ((chunk - mean) ** 2).mean(0)
        expected[rows] = (chunk - mean) / torch.sqrt(var + 1e-5)
    for r, result in enumerate(ranks):
        local = slice(r * BATCH, (r + 1) * BATCH)
        torch.testing.assert_close(result["shuffled"], expected[local], rtol=1e-12, atol=1e-12)
        unshuffled = nn.BatchNorm1d(DIM, affine=False).double()(x[local])
        assert not torch.allclose(result["shuffled"], unshuffled)


def nt_xent_reference(q, k, temperature):
    """Float64 NT-Xent over the global batch from SimCLR's definition, one anchor at a time."""
    z = [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in q.tolist() + k.tolist()]
    n = len(z) // 2
    total = 0.0
    for anchor in range(2 * n):
        positive = anchor + n if anchor < n else anchor - n
        logits = {j: sum(x * y for x, y in zip(z[anchor], z[j])) / temperature for j in range(2 * n) if j != anchor}
        total += math.log(sum(math.exp(v) for v in logits.values())) - logits[positive]
    return total / (2 * n)


def test_gathered_nt_xent_equals_single_process_and_reference(ranks):
    q, k, _, _ = global_data()
    qg, kg = q.clone().requires_grad_(), k.clone().requires_grad_()
    global_loss = nt_xent(qg, kg, TEMPERATURE)
    global_loss.backward()
    reference = nt_xent_reference(q, k, TEMPERATURE)
    rank_losses = [r["nt_xent_loss"].item() for r in ranks]
    assert rank_losses[0] != pytest.approx(rank_losses[1], rel=1e-6)
    # every rank's anchors against all 2N candidates: the mean over ranks is the global NT-Xent
    assert sum(rank_losses) / WORLD == pytest.approx(reference, rel=1e-12)
    assert global_loss.item() == pytest.approx(reference, rel=1e-12)
    # without the gather each rank would see only its own 2B - 2 negatives: a smaller loss
    for r, result in enumerate(ranks):
        local = slice(r * BATCH, (r + 1) * BATCH)
        assert nt_xent(q[local], k[local], TEMPERATURE, gather=False).item() < rank_losses[r]
        for grad, expected in zip(result["nt_xent_grads"], (qg.grad, kg.grad)):
            assert grad.abs().sum() > 0
            torch.testing.assert_close(grad / WORLD, expected[local], rtol=1e-10, atol=1e-13)


def test_global_batch_norm_equals_one_process_batch_norm_on_the_whole_batch(ranks):
    x, weight, bias, loss_weights = bn_data()
    # one process: plain BatchNorm1d over the concatenated batch
    bn = nn.BatchNorm1d(BN_CHANNELS, momentum=0.3).double()
    with torch.no_grad():
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
    xg = x.clone().requires_grad_()
    out = bn(xg)
    bn_loss(out, loss_weights).backward()
    bn.eval()
    eval_out = bn(x)
    for r, result in enumerate(ranks):
        rows = slice(sum(BN_ROWS[:r]), sum(BN_ROWS[: r + 1]))
        torch.testing.assert_close(result["bn_out"], out[rows].detach(), rtol=1e-12, atol=1e-12)
        # statistics of this rank alone would give another output (the test is not vacuous)
        alone = nn.functional.batch_norm(x[rows], None, None, weight, bias, training=True)
        assert not torch.allclose(result["bn_out"], alone, atol=1e-3)
        # the rank losses add up to the global loss: input gradients equal, parameter gradients sum
        torch.testing.assert_close(result["bn_grads"][0], xg.grad[rows], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(result["bn_running"][0], bn.running_mean, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(result["bn_running"][1], bn.running_var, rtol=1e-12, atol=1e-14)
        assert int(result["bn_running"][2]) == 1
        torch.testing.assert_close(result["bn_eval_out"], eval_out[rows].detach(), rtol=1e-12, atol=1e-12)
    for i, param in ((1, bn.weight), (2, bn.bias)):
        torch.testing.assert_close(sum(r["bn_grads"][i] for r in ranks), param.grad, rtol=1e-10, atol=1e-12)


def test_torch_sync_batch_norm_still_refuses_cpu_ranks(ranks):
    """Why GlobalBatchNorm1d: torch 2.13's SyncBatchNorm raises in a CPU/gloo training forward. If
    this fails, PyTorch now supports it and GlobalBatchNorm1d could give way to it."""
    for result in ranks:
        assert "SyncBatchNorm expected input tensor to be on GPU" in result["torch_sync_bn_error"]


@pytest.mark.parametrize("negatives", NEGATIVES)
def test_simclr_task_on_two_ranks_trains_like_one_process(ranks, negatives):
    _, _, _, features = global_data()
    torch.manual_seed(5)
    simclr = SimCLRTask(temperature=TEMPERATURE, negatives=negatives, hidden_dim=8, out_dim=4)
    simclr.setup(nn.Identity(), 5)
    assert any(isinstance(m, GlobalBatchNorm1d) for m in simclr.modules())
    views = [features[0].clone().requires_grad_(), features[1].clone().requires_grad_()]
    out = simclr(TaskInput({"views": views}, [PooledOutput(v) for v in views], nn.Identity(), 0, 1))
    out.total.backward()
    mean_loss = sum(r[f"simclr_loss_{negatives}"] for r in ranks) / WORLD
    torch.testing.assert_close(mean_loss, out.total.detach(), rtol=1e-5, atol=1e-6)
    for i, p in enumerate(simclr.parameters()):
        averaged = sum(r[f"simclr_head_grads_{negatives}"][i] for r in ranks) / WORLD  # what DDP all-reduces
        torch.testing.assert_close(averaged, p.grad, rtol=1e-4, atol=1e-6)
    for i, buffer in enumerate(simclr.buffers()):  # head BN running statistics of the global batch
        for result in ranks:
            torch.testing.assert_close(result[f"simclr_running_{negatives}"][i], buffer, rtol=1e-5, atol=1e-6)
    for r, result in enumerate(ranks):
        local = slice(r * BATCH, (r + 1) * BATCH)
        for v in range(2):
            torch.testing.assert_close(result[f"simclr_view_grads_{negatives}"][v] / WORLD, views[v].grad[local], rtol=1e-4, atol=1e-6)


def test_moco_step_keeps_queue_and_key_encoder_identical_across_ranks(ranks):
    first, second = ranks
    assert first["moco_queue"].shape == (WORLD * BATCH, 4)
    assert torch.equal(first["moco_queue"], second["moco_queue"])
    assert len(first["moco_key_state"]) == 4
    for name, tensor in first["moco_key_state"].items():
        assert torch.equal(tensor, second["moco_key_state"][name]), name


def test_sync_batch_norm_on_cpu_ranks_is_refused_with_a_clear_message(ranks):
    for result in ranks:
        assert "key_bn = 'sync' needs CUDA" in result["sync_error"]
