"""Part-map codecs: each kind's logits -> stored array -> probabilities path against a float64
reference written from the format's definition, and the registry every user of kinds goes through."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hcframe_video.partmaps import (
    CODECS,
    KINDS,
    TOPK_MAX_ERROR,
    LabelsCodec,
    LogitsCodec,
    PartMapCodec,
    PartMapError,
    PartMapStore,
    PartMapWriter,
    TopKCodec,
    codec_for,
)

NUM, T, H, W = 7, 3, 5, 4


def _logits(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2.5, size=(T, NUM, H, W)).astype(np.float32)


def _softmax64(x: np.ndarray) -> np.ndarray:
    """Softmax over the class axis (1) of ``[T, K, h, w]`` in float64."""
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _round_trip(codec: PartMapCodec, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(stored arrays [T, ...], read-back probabilities [T, K, h, w]) along the cache's path."""
    values = codec.from_logits(torch.from_numpy(logits))
    stored = np.stack([codec.encode(v, f"frame {i}") for i, v in enumerate(values)])
    return stored, codec.decode(stored).numpy().transpose(1, 0, 2, 3)


def test_labels_codec_stores_the_argmax_and_reads_it_one_hot():
    logits = _logits(0)
    stored, probs = _round_trip(codec_for("labels", NUM), logits)
    reference = np.zeros((T, NUM, H, W))
    for t in range(T):
        for y in range(H):
            for x in range(W):
                reference[t, int(np.argmax(logits[t, :, y, x].astype(np.float64))), y, x] = 1.0
    assert stored.dtype == np.uint8 and stored.shape == (T, H, W)
    np.testing.assert_array_equal(stored, reference.argmax(axis=1))
    np.testing.assert_array_equal(probs, reference)


def test_topk_codec_keeps_the_k_most_probable_within_one_step_of_1_255():
    logits, k = _logits(1), 3
    stored, probs = _round_trip(codec_for("topk", NUM, k), logits)
    p = _softmax64(logits)
    top = np.argsort(-p, axis=1)[:, :k]  # [T, k, h, w], most probable first
    kept = np.take_along_axis(p, top, axis=1)
    reference = np.zeros_like(p)
    np.put_along_axis(reference, top, kept / kept.sum(axis=1, keepdims=True), axis=1)
    assert stored.dtype == np.uint8 and stored.shape == (T, 2, k, H, W)
    np.testing.assert_array_equal(stored[:, 0], top)  # class ids, most probable first
    assert (stored[:, 1].astype(int).sum(axis=1) == 255).all()  # quantised to whole 1/255 steps
    assert np.abs(probs - reference).max() < TOPK_MAX_ERROR
    assert (probs[reference == 0] == 0).all()  # classes outside the top k get nothing
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_logits_codec_stores_float16_and_reads_their_softmax():
    logits = _logits(2)
    stored, probs = _round_trip(codec_for("logits", NUM), logits)
    assert stored.dtype == np.float16 and stored.shape == (T, NUM, H, W)
    np.testing.assert_array_equal(stored, logits.astype(np.float16))
    np.testing.assert_allclose(probs, _softmax64(logits.astype(np.float16)), atol=1e-6)


def test_every_kind_is_one_registered_codec_used_by_the_store_and_the_cli():
    from hcframe_parsing.cli import cache_teacher_command

    assert CODECS == {"labels": LabelsCodec, "topk": TopKCodec, "logits": LogitsCodec}
    assert KINDS == tuple(CODECS) and all(codec.name == kind for kind, codec in CODECS.items())
    kind_option = next(p for p in cache_teacher_command.params if p.name == "kind")
    assert list(kind_option.type.choices) == list(CODECS)
    with pytest.raises(PartMapError, match="kind must be one of labels, topk, logits, got 'probs'"):
        codec_for("probs", NUM)
    with pytest.raises(PartMapError, match="k: kind 'topk' needs 1 <= k <= 7, got 9"):
        codec_for("topk", NUM, 9)
    with pytest.raises(PartMapError, match="k: only kind 'topk' takes k"):
        codec_for("labels", NUM, 2)
    with pytest.raises(PartMapError, match="need 1..255 names for kind 'labels', got 300"):
        codec_for("labels", 300)
    assert codec_for("logits", 300).num_classes == 300  # float logits name any number of classes
    assert TopKCodec.fit_k(9, NUM) == NUM and LabelsCodec.fit_k(9, NUM) is None  # what a cache keeps


class _HalfProbabilities(PartMapCodec):
    """A kind the store has never heard of: float16 probabilities."""

    name = "half"
    max_classes = None

    def from_logits(self, logits):
        return list(torch.softmax(logits.float(), dim=1).numpy())

    def encode(self, value, where):
        return np.asarray(value, dtype=np.float16)

    def decode(self, raw):
        return torch.from_numpy(raw.astype(np.float32)).transpose(0, 1).contiguous()


def test_a_new_kind_needs_only_its_codec(tmp_path, monkeypatch):
    monkeypatch.setitem(CODECS, "half", _HalfProbabilities)
    logits = _logits(3)
    writer = PartMapWriter(tmp_path, "half", [f"c{i}" for i in range(NUM)], {})
    writer.write_video("v", writer.codec.from_logits(torch.from_numpy(logits)))
    store = PartMapStore(tmp_path)
    assert isinstance(store.codec, _HalfProbabilities)
    np.testing.assert_allclose(store.read("v", range(T)).numpy().transpose(1, 0, 2, 3), _softmax64(logits), atol=1e-3)
