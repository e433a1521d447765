"""The evaluation feature cache uses a file only when it is exactly what was written (size and
SHA-256 recorded beside it) and has the cache's structure; anything else (a flipped byte that
still loads, a truncated file, a list, a file without a record) is extracted again with one log
line saying why, and the features are the same as the first extraction's."""

from __future__ import annotations

import json

import pytest
import torch
from eval_toy import TEST_DATA, toy_raw

from hcframe.engine.trainer import build_model
from hcframe.evaluation import load_or_extract_features
from hcframe.files import record_digest
from hcframe.recipe import parse_recipe
from hcframe.transforms import Normalize

pytestmark = pytest.mark.usefixtures("testkit")


@pytest.fixture
def extract(tmp_path):
    raw = toy_raw()
    raw["data"] = dict(TEST_DATA)
    recipe = parse_recipe(raw)
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    messages: list[str] = []

    def run():
        messages.clear()
        return load_or_extract_features(model, "concat", recipe.data, Normalize(), {"name": "normalize"},
                                        torch.device("cpu"), tmp_path, log=messages.append)

    return run, messages


def _damage_a_feature_byte(path, features):
    """Flip one bit of a stored feature value: the file still loads (torch does not check the
    zip's CRCs) and silently gives other numbers."""
    data = bytearray(path.read_bytes())
    offset = data.index(features.numpy().tobytes()[:64])  # tensors are stored uncompressed
    data[offset + 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["features"], features)


def test_a_cache_file_that_is_not_what_was_written_is_extracted_again(extract, tmp_path):
    run, messages = extract
    first, path, hit = run()
    assert not hit and json.loads(path.with_name(path.name + ".digest.json").read_text())["size"] == path.stat().st_size
    _, _, hit = run()
    assert hit

    cases = {
        "flipped": (lambda: _damage_a_feature_byte(path, first.features), "its SHA-256 differs from the one recorded when it was written"),
        "truncated": (lambda: path.write_bytes(path.read_bytes()[:100]), "it has 100 bytes, "),
        "a list": (lambda: (torch.save([1, 2, 3], path), record_digest(path)), "holds a list, not a feature cache"),
        "no record": (lambda: path.with_name(path.name + ".digest.json").unlink(), "no size and hash were recorded when it was written"),
    }
    for name, (damage, reason) in cases.items():
        damage()
        again, again_path, hit = run()
        assert not hit and again_path == path, name
        notes = [m for m in messages if m.startswith(f"feature cache {path}: ")]
        assert len(notes) == 1 and reason in notes[0] and notes[0].endswith("; extracting again"), (name, messages)
        assert torch.equal(again.features, first.features) and again.video_ids == first.video_ids, name
        _, _, hit = run()
        assert hit, name  # the re-made file is trusted again
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, path.name + ".digest.json"])
