"""NT-Xent and InfoNCE against independent float64 references written with explicit Python loops."""

from __future__ import annotations

import math

import pytest
import torch

from hcframe_contrastive import GlobalBatchNorm1d, ProjectionMLP, contrastive_logits, info_nce, nt_xent, nt_xent_logits


def _unit(row: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in row))
    return [v / norm for v in row]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def reference_rows(queries, candidates_per_row, positive_index, temperature):
    """Per-row InfoNCE, accuracy and similarities with Python floats (float64)."""
    losses, hits, pos, neg = [], [], [], []
    for q, candidates, p in zip(queries, candidates_per_row, positive_index):
        sims = [_dot(q, c) for c in candidates]
        logits = [s / temperature for s in sims]
        top = max(logits)
        log_denominator = top + math.log(sum(math.exp(v - top) for v in logits))
        losses.append(log_denominator - logits[p])
        hits.append(1.0 if max(range(len(sims)), key=lambda j: sims[j]) == p else 0.0)
        pos.append(sims[p])
        neg.extend(s for j, s in enumerate(sims) if j != p)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return mean(losses), mean(hits), mean(pos), mean(neg)


def in_batch_reference(q, k, temperature, symmetric):
    qs = [_unit(r) for r in q.tolist()]
    ks = [_unit(r) for r in k.tolist()]
    rows_q, cands, targets = list(qs), [ks] * len(qs), list(range(len(qs)))
    if symmetric:
        rows_q += ks
        cands += [qs] * len(ks)
        targets += list(range(len(ks)))
    return reference_rows(rows_q, cands, targets, temperature)


def queue_reference(q, k, negatives, temperature):
    qs = [_unit(r) for r in q.tolist()]
    ks = [_unit(r) for r in k.tolist()]
    ns = [_unit(r) for r in negatives.tolist()]
    return reference_rows(qs, [[kk] + ns for kk in ks], [0] * len(qs), temperature)


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(7)
    q = torch.randn(6, 5, generator=g, dtype=torch.float64)
    # keys correlated with their queries, so the accuracy is neither 0 nor 1
    k = q + 1.2 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    negatives = torch.randn(11, 5, generator=g, dtype=torch.float64)
    return q, k, negatives


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("temperature", [0.07, 0.1, 0.5])
def test_in_batch_loss_and_metrics_match_reference(inputs, symmetric, temperature):
    q, k, _ = inputs
    loss_ref, acc_ref, pos_ref, neg_ref = in_batch_reference(q, k, temperature, symmetric)
    loss = info_nce(q, k, temperature=temperature, symmetric=symmetric)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(loss_ref, rel=1e-12, abs=1e-12)
    metrics = contrastive_logits(q, k, temperature=temperature, symmetric=symmetric).metrics()
    assert metrics["acc"].item() == pytest.approx(acc_ref)
    assert 0.0 < acc_ref < 1.0
    assert metrics["pos_sim"].item() == pytest.approx(pos_ref, abs=1e-12)
    assert metrics["neg_sim"].item() == pytest.approx(neg_ref, abs=1e-12)
    # float32 inputs give the same value to float32 precision
    loss32 = info_nce(q.float(), k.float(), temperature=temperature, symmetric=symmetric)
    assert loss32.item() == pytest.approx(loss_ref, rel=1e-5)


def test_symmetric_is_mean_of_both_directions(inputs):
    q, k, _ = inputs
    both = info_nce(q, k, temperature=0.2, symmetric=True)
    forward = info_nce(q, k, temperature=0.2)
    backward = info_nce(k, q, temperature=0.2)
    assert both.item() == pytest.approx(0.5 * (forward.item() + backward.item()), rel=1e-12)
    assert forward.item() != pytest.approx(backward.item(), rel=1e-6)


@pytest.mark.parametrize("temperature", [0.07, 0.3])
def test_queue_form_matches_reference(inputs, temperature):
    q, k, negatives = inputs
    loss_ref, acc_ref, pos_ref, neg_ref = queue_reference(q, k, negatives, temperature)
    logits = contrastive_logits(q, k, negatives, temperature)
    assert logits.similarities.shape == (6, 12)
    assert torch.equal(logits.targets, torch.zeros(6, dtype=torch.long))
    assert logits.loss().item() == pytest.approx(loss_ref, rel=1e-12)
    assert info_nce(q, k, negatives, temperature).item() == pytest.approx(loss_ref, rel=1e-12)
    metrics = logits.metrics()
    assert metrics["acc"].item() == pytest.approx(acc_ref)
    assert metrics["pos_sim"].item() == pytest.approx(pos_ref, abs=1e-12)
    assert metrics["neg_sim"].item() == pytest.approx(neg_ref, abs=1e-12)


def _tensor_reference_loss(q, k, negatives, temperature, symmetric):
    """The same losses with plain float64 tensor ops (for autograd), log-softmax written out."""
    qn = q / q.pow(2).sum(1, keepdim=True).sqrt()
    kn = k / k.pow(2).sum(1, keepdim=True).sqrt()

    def rows(a, cands, targets):
        logits = a @ cands.t() / temperature
        top = logits.max(1, keepdim=True).values.detach()
        log_den = (logits - top).exp().sum(1).log() + top.squeeze(1)
        return (log_den - logits[torch.arange(a.shape[0]), targets]).mean()

    if negatives is not None:
        nn_ = negatives / negatives.pow(2).sum(1, keepdim=True).sqrt()
        cands = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ nn_.t()], 1) / temperature
        top = cands.max(1, keepdim=True).values.detach()
        return ((cands - top).exp().sum(1).log() + top.squeeze(1) - cands[:, 0]).mean()
    targets = torch.arange(q.shape[0])
    loss = rows(qn, kn, targets)
    if symmetric:
        loss = 0.5 * (loss + rows(kn, qn, targets))
    return loss


@pytest.mark.parametrize("form", ["one_directional", "symmetric", "queue"])
def test_gradients_reach_both_views_and_match_reference(inputs, form):
    q0, k0, negatives = inputs
    symmetric = form == "symmetric"
    neg = negatives if form == "queue" else None
    q, k = q0.clone().requires_grad_(), k0.clone().requires_grad_()
    info_nce(q, k, neg, 0.1, symmetric=symmetric).backward()
    qr, kr = q0.clone().requires_grad_(), k0.clone().requires_grad_()
    _tensor_reference_loss(qr, kr, neg, 0.1, symmetric).backward()
    for grad, ref in ((q.grad, qr.grad), (k.grad, kr.grad)):
        assert grad is not None and grad.abs().sum() > 0
        torch.testing.assert_close(grad, ref, rtol=1e-10, atol=1e-12)


def test_bad_arguments_raise_one_line_errors(inputs):
    q, k, negatives = inputs
    with pytest.raises(ValueError, match="temperature"):
        info_nce(q, k, temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        info_nce(q, k[:3])
    with pytest.raises(ValueError, match="negatives"):
        info_nce(q, k, negatives[:, :3])
    with pytest.raises(ValueError, match="symmetric and gather"):
        info_nce(q, k, negatives, symmetric=True)


@pytest.mark.parametrize("num_layers,batch_norm", [(1, False), (2, True), (3, False)])
def test_projection_mlp_shapes_and_normalisation(num_layers, batch_norm):
    head = ProjectionMLP(12, hidden_dim=20, out_dim=7, num_layers=num_layers, batch_norm=batch_norm)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == num_layers
    assert linears[0].in_features == 12 and linears[-1].out_features == 7
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules()) == (batch_norm and num_layers > 1)
    out = head(torch.randn(5, 12))
    assert out.shape == (5, 7)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    raw = ProjectionMLP(12, 20, 7, num_layers, batch_norm, normalize=False)(torch.randn(5, 12))
    assert not torch.allclose(raw.norm(dim=1), torch.ones(5))
    with pytest.raises(ValueError, match="num_layers"):
        ProjectionMLP(12, num_layers=0)


def test_global_batch_norm_head_is_plain_batch_norm_in_one_process():
    torch.manual_seed(0)
    plain = ProjectionMLP(12, hidden_dim=20, out_dim=7)
    global_bn = ProjectionMLP(12, hidden_dim=20, out_dim=7, global_batch_norm=True)
    assert any(isinstance(m, GlobalBatchNorm1d) for m in global_bn.modules())
    global_bn.load_state_dict(plain.state_dict())  # same state dict: checkpoints move freely
    x = torch.randn(9, 12)
    for mode in (True, False):
        plain.train(mode)
        global_bn.train(mode)
        assert torch.equal(plain(x), global_bn(x))
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), global_bn.state_dict().values()))


@pytest.mark.parametrize("form", ["symmetric", "queue"])
def test_similarities_are_float32_under_autocast(inputs, form):
    q, k, negatives = (t.to(torch.bfloat16) for t in inputs)
    neg = negatives if form == "queue" else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = contrastive_logits(q, k, neg, 0.07, symmetric=form == "symmetric")
        loss = logits.loss()
    assert logits.similarities.dtype == torch.float32 and loss.dtype == torch.float32
    expected = info_nce(q.float(), k.float(), None if neg is None else neg.float(), 0.07, symmetric=form == "symmetric")
    assert torch.equal(loss, expected)


# --- NT-Xent (SimCLR) --------------------------------------------------------------------------
def nt_xent_reference(a, b, temperature):
    """SimCLR's NT-Xent from its definition, one anchor at a time, in Python floats (float64).

    z = [a_1..a_N, b_1..b_N], unit rows. Anchor k's positive is the other view of the same item
    (k +- N); loss_k = -log( exp(s(z_k, z_pos) / T) / sum_{j != k} exp(s(z_k, z_j) / T) ); the loss
    is the mean of loss_k over all 2N anchors. Also the top-1 accuracy over the 2N - 1 candidates
    and the mean positive / negative similarity.
    """
    z = [_unit(r) for r in a.tolist()] + [_unit(r) for r in b.tolist()]
    n = len(z) // 2
    losses, hits, pos, neg = [], [], [], []
    for k in range(2 * n):
        positive = k + n if k < n else k - n
        others = [j for j in range(2 * n) if j != k]
        sims = {j: _dot(z[k], z[j]) for j in others}
        denominator = sum(math.exp(sims[j] / temperature) for j in others)
        losses.append(-math.log(math.exp(sims[positive] / temperature) / denominator))
        hits.append(1.0 if max(others, key=lambda j: sims[j]) == positive else 0.0)
        pos.append(sims[positive])
        neg.extend(sims[j] for j in others if j != positive)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return mean(losses), mean(hits), mean(pos), mean(neg)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_and_metrics_match_simclr_reference(inputs, temperature):
    a, b, _ = inputs
    loss_ref, acc_ref, pos_ref, neg_ref = nt_xent_reference(a, b, temperature)
    loss = nt_xent(a, b, temperature)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(loss_ref, rel=1e-12)
    logits = nt_xent_logits(a, b, temperature)
    assert logits.similarities.shape == (12, 11)  # 2N anchors x (2N - 1) candidates
    metrics = logits.metrics()
    assert 0.0 < acc_ref < 1.0
    assert metrics["acc"].item() == pytest.approx(acc_ref)
    assert metrics["pos_sim"].item() == pytest.approx(pos_ref, abs=1e-12)
    assert metrics["neg_sim"].item() == pytest.approx(neg_ref, abs=1e-12)
    assert nt_xent(a.float(), b.float(), temperature).item() == pytest.approx(loss_ref, rel=1e-5)
    # gather=True (the default) changes nothing in one process
    assert nt_xent(a, b, temperature, gather=False).item() == pytest.approx(loss_ref, rel=1e-12)


def test_nt_xent_differs_from_the_cross_view_form(inputs):
    """The cross-view InfoNCE (hcframe's simclr before) is another objective: fewer negatives."""
    a, b, _ = inputs
    cross_view = info_nce(a, b, temperature=0.1, symmetric=True).item()
    assert nt_xent(a, b, 0.1).item() > cross_view + 0.05
    assert cross_view == pytest.approx(in_batch_reference(a, b, 0.1, True)[0], rel=1e-12)


def test_nt_xent_on_the_issues_embeddings_gives_lightlys_figures():
    """Issue 9's cross-check: 8 x 128 random embeddings (torch.manual_seed(0), two draws), where
    lightly 1.6.0's NTXentLoss gave 3.2461 at T = 0.1 and, on the next draw, 2.6207 at T = 0.5, and
    hcframe's former simclr loss (cross-view) 2.6036 and 2.0074."""
    torch.manual_seed(0)
    for temperature, lightly, cross_view in ((0.1, 3.2461, 2.6036), (0.5, 2.6207, 2.0074)):
        a, b = torch.randn(8, 128), torch.randn(8, 128)
        reference = nt_xent_reference(a.double(), b.double(), temperature)[0]
        assert reference == pytest.approx(lightly, abs=5e-5)
        assert nt_xent(a, b, temperature).item() == pytest.approx(reference, rel=1e-6)
        assert info_nce(a, b, temperature=temperature, symmetric=True).item() == pytest.approx(cross_view, abs=5e-5)


def test_nt_xent_gradients_match_finite_differences(inputs):
    a, b, _ = inputs
    a, b = a[:4].clone().requires_grad_(), b[:4].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: nt_xent(x, y, 0.2), (a, b))
    nt_xent(a, b, 0.2).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_nt_xent_bad_arguments_and_autocast(inputs):
    a, b, _ = inputs
    with pytest.raises(ValueError, match="temperature must be > 0"):
        nt_xent(a, b, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(a, b[:3])
    with pytest.raises(ValueError, match="empty"):
        nt_xent(a[:0], b[:0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = nt_xent_logits(a.to(torch.bfloat16), b.to(torch.bfloat16), 0.1)
    assert logits.similarities.dtype == torch.float32
    assert torch.equal(logits.loss(), nt_xent(a.to(torch.bfloat16).float(), b.to(torch.bfloat16).float(), 0.1))
