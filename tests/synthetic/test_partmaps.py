"""The part-map store: round trips for every kind, nearest-frame lookup, staleness, atomicity."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from hcframe import TargetStore
from hcframe_video.partmaps import (
    LIP_LABELS,
    TOPK_MAX_ERROR,
    PartMapError,
    PartMapStore,
    PartMapWriter,
    flip_permutation,
    quantise_topk,
    safe_name,
)

IDENTITY = {"teacher": "unit-test", "input_size": [8, 6], "labels": "lip"}


def _random_labels(rng: np.random.Generator, t: int, h: int, w: int, k: int) -> np.ndarray:
    labels = rng.integers(0, k, size=(t, h, w)).astype(np.uint8)
    labels[rng.random((t, h, w)) < 0.1] = 255
    return labels


def test_labels_round_trip_is_exact_one_hot(tmp_path):
    rng = np.random.default_rng(0)
    labels = _random_labels(rng, 5, 6, 7, len(LIP_LABELS))
    writer = PartMapWriter(tmp_path / "s", "labels", LIP_LABELS, IDENTITY, resolution=(6, 7))
    writer.write_video("class a/v_01.avi", labels)
    store = PartMapStore(tmp_path / "s", expected_identity=IDENTITY)
    assert isinstance(store, TargetStore)
    out = store.read("class a/v_01.avi", [4, 0, 2])
    assert out.dtype == torch.float32 and out.shape == (20, 3, 6, 7)
    for j, f in enumerate([4, 0, 2]):
        ref = np.zeros((20, 6, 7), dtype=np.float32)
        for c in range(20):
            ref[c] = labels[f] == c
        np.testing.assert_array_equal(out[:, j].numpy(), ref)
        # unknown pixels are all-zero, every known pixel sums to exactly one
        np.testing.assert_array_equal(out[:, j].sum(0).numpy(), (labels[f] != 255).astype(np.float32))
    np.testing.assert_array_equal(store.read_raw("class a/v_01.avi", [1, 3]), labels[[1, 3]])
    assert store.video_ids() == ["class a/v_01.avi"]


def test_logits_round_trip_is_softmax_of_float16(tmp_path):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, size=(4, 5, 3, 2)).astype(np.float32)
    PartMapWriter(tmp_path, "logits", ["bg", "a", "b", "c", "d"], IDENTITY).write_video("v", logits)
    store = PartMapStore(tmp_path)
    out = store.read("v", [0, 1, 2, 3]).numpy().astype(np.float64)
    x = logits.astype(np.float16).astype(np.float64)  # the stored precision
    ref = np.exp(x - x.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    np.testing.assert_allclose(out, ref.transpose(1, 0, 2, 3), atol=1e-6)
    # and against the float32 logits, within what float16 storage can lose
    ref32 = np.exp(logits - logits.max(1, keepdims=True))
    ref32 /= ref32.sum(1, keepdims=True)
    np.testing.assert_allclose(out, ref32.transpose(1, 0, 2, 3), atol=1e-2)


def test_topk_round_trip_within_stated_bound(tmp_path):
    rng = np.random.default_rng(2)
    num, k, t = 20, 3, 4
    logits = rng.normal(0, 2, size=(t, num, 9, 8))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    PartMapWriter(tmp_path, "topk", LIP_LABELS, IDENTITY, k=k).write_video("vid", probs)
    store = PartMapStore(tmp_path)
    out = store.read("vid", range(t)).numpy().astype(np.float64)  # [K, T, h, w]
    # independent reference: float64 top-k by sorting, renormalised
    ref = np.zeros_like(probs)
    top = np.argsort(-probs, axis=1)[:, :k]
    kept = np.take_along_axis(probs, top, axis=1)
    np.put_along_axis(ref, top, kept / kept.sum(1, keepdims=True), axis=1)
    err = np.abs(out - ref.transpose(1, 0, 2, 3))
    assert err.max() < TOPK_MAX_ERROR
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-6)
    # classes outside the top k get nothing
    assert ((ref.transpose(1, 0, 2, 3) == 0) <= (out == 0)).all()


def test_topk_pairs_and_unknown_pixels(tmp_path):
    ids = np.array([[[[1]], [[4]]], [[[2]], [[0]]]], dtype=np.uint8)  # [T=2, k=2, 1, 1]
    probs = np.array([[[[0.3]], [[0.1]]], [[[0.0]], [[0.0]]]])  # frame 1 unknown
    PartMapWriter(tmp_path, "topk", ["a", "b", "c", "d", "e"], {}, k=2).write_video("v", (ids, probs))
    out = PartMapStore(tmp_path).read("v", [0, 1])
    np.testing.assert_allclose(out[:, 0, 0, 0].numpy(), [0, 0.75, 0, 0, 0.25], atol=TOPK_MAX_ERROR)
    assert out[:, 1].abs().sum() == 0


def test_quantise_topk_sums_to_255_and_bound_holds():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(5) * 0.3, size=(40, 40)).transpose(2, 0, 1)
    q = quantise_topk(p)
    assert (q.astype(int).sum(0) == 255).all()
    assert np.abs(q / 255.0 - p / p.sum(0)).max() < TOPK_MAX_ERROR


def test_missing_frames_use_nearest_stored_frame(tmp_path):
    labels = {0: np.full((2, 2), 1), 4: np.full((2, 2), 2), 8: np.full((2, 2), 3)}
    PartMapWriter(tmp_path, "labels", ["a", "b", "c", "d"], {}).write_video("v", labels)
    store = PartMapStore(tmp_path)
    np.testing.assert_array_equal(store.frame_indices("v"), [0, 4, 8])
    got = store.read_raw("v", [0, 1, 2, 3, 5, 6, 7, 100])[:, 0, 0]
    np.testing.assert_array_equal(got, [1, 1, 1, 2, 2, 2, 3, 3])  # tie at 2 and 6 -> earlier frame


def test_stale_identity_and_missing_video_fail_with_one_line(tmp_path):
    PartMapWriter(tmp_path, "labels", ["a", "b"], IDENTITY).write_video("v", np.zeros((1, 2, 2)))
    with pytest.raises(PartMapError, match="stale") as info:
        PartMapStore(tmp_path, expected_identity={**IDENTITY, "teacher": "other"})
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    # tuples vs lists and key order do not make an identity differ
    PartMapStore(tmp_path, expected_identity={"labels": "lip", "input_size": (8, 6), "teacher": "unit-test"})
    with pytest.raises(PartMapError, match="no video 'w'") as info:
        PartMapStore(tmp_path).read("w", [0])
    assert str(tmp_path) in str(info.value)
    with pytest.raises(PartMapError, match="no meta.json"):
        PartMapStore(tmp_path / "nowhere")


def test_writer_resumes_and_refuses_a_different_producer(tmp_path):
    w = PartMapWriter(tmp_path, "labels", ["a", "b"], IDENTITY)
    w.write_video("done", np.zeros((1, 2, 2)))
    w2 = PartMapWriter(tmp_path, "labels", ["a", "b"], IDENTITY)
    assert w2.has_video("done") and not w2.has_video("todo")
    with pytest.raises(PartMapError, match="identity"):
        PartMapWriter(tmp_path, "labels", ["a", "b"], {"teacher": "new"})
    with pytest.raises(PartMapError, match="kind"):
        PartMapWriter(tmp_path, "logits", ["a", "b"], IDENTITY)
    # no temporary files are left behind, and the same maps give the same bytes
    first = w.path_of("done").read_bytes()
    w2.write_video("done", np.zeros((1, 2, 2)))
    assert w.path_of("done").read_bytes() == first
    assert [p.name for p in (tmp_path / "videos").iterdir()] == ["done.npz"]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["kind"] == "labels" and meta["identity"] == IDENTITY and "time" in meta["created"]


def test_bad_inputs_are_rejected(tmp_path):
    w = PartMapWriter(tmp_path, "labels", ["a", "b"], {}, resolution=(2, 2))
    with pytest.raises(PartMapError, match="label 7"):
        w.write_video("v", np.full((1, 2, 2), 7))
    with pytest.raises(PartMapError, match="resolution"):
        w.write_video("v", np.zeros((1, 3, 2)))
    with pytest.raises(PartMapError, match="k:"):
        PartMapWriter(tmp_path / "t", "topk", ["a", "b"], {})
    assert not w.has_video("v")


def test_safe_name_is_injective_and_safe():
    ids = ["a/b", "a%2Fb", "a_b", "../x", ".hidden", "ü", "a b"]
    names = [safe_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    for n in names:
        assert "/" not in n and not n.startswith(".") and os.sep not in n


def test_flip_permutation_swaps_left_and_right_classes():
    perm = flip_permutation(LIP_LABELS)
    swapped = {c: perm[c] for c in range(20) if perm[c] != c}
    assert swapped == {14: 15, 15: 14, 16: 17, 17: 16, 18: 19, 19: 18}
    assert flip_permutation(["background", "left_hand", "RightHand", "left leg"]) == [0, 2, 1, 3]  # no right leg
