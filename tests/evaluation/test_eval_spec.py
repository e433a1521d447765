"""[[eval]] validation: one-line RecipeErrors naming eval[i].key; resolved tables round-trip."""

import tomllib

import pytest
from eval_toy import TEST_DATA, TRAIN_DATA, toy_raw

from hcframe.evaluation import FinetuneOptions, LinearProbeOptions, build_eval_specs
from hcframe.recipe import RecipeError, dump_toml, parse_recipe
from hcframe.registry import get_registry

pytestmark = pytest.mark.usefixtures("testkit")


def probe(**extra):
    return {"protocol": "linear_probe", "train_data": TRAIN_DATA, "test_data": TEST_DATA, **extra}


def error_of(*evals):
    with pytest.raises(RecipeError) as info:
        parse_recipe(toy_raw(*evals), source="toy.toml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_protocol_suggests_the_near_miss():
    message = error_of(probe(), probe(protocol="linear_prob"))
    assert message == "toy.toml: eval[1].protocol: unknown protocol 'linear_prob'; did you mean 'linear_probe'?"


def test_unknown_key_names_the_table_and_suggests():
    assert error_of(probe(max_iters=10)).startswith("toy.toml: eval[0].max_iters: unknown key for protocol 'linear_probe'; did you mean 'max_iter'?")
    # A key of another protocol is unknown here.
    assert "eval[0].epochs: unknown key" in error_of(probe(epochs=3))


def test_bad_values_and_missing_tables():
    assert "eval[0].max_iter" in error_of(probe(max_iter=0))
    assert "eval[0].weight_decay: expected a number" in error_of(probe(weight_decay="big"))
    assert "eval[0].branch: no task 'supp'; did you mean 'sup'?" in error_of(probe(branch="supp"))
    assert "eval[0].test_data: missing dataset table" in error_of({"protocol": "retrieval", "train_data": TRAIN_DATA})
    assert "eval[0].train_data.num_video: unknown key for dataset 'moving_squares'" in error_of(
        probe(train_data={"name": "moving_squares", "num_video": 3})
    )
    assert "eval[0].test_data.name" in error_of(probe(test_data={"name": "moving_square"}))
    assert "eval[0].ks" in error_of({"protocol": "retrieval", "train_data": TRAIN_DATA, "test_data": TEST_DATA, "ks": [0, 5]})
    assert "eval[0].optimizer" in error_of({"protocol": "finetune", "train_data": TRAIN_DATA, "test_data": TEST_DATA, "optimizer": "adam"})
    assert "eval[0].protocol: missing" in error_of({"train_data": TRAIN_DATA})
    assert "eval[0].transform.name" in error_of(probe(transform={"name": "normalise"}))
    assert "eval[0].splits: expected a non-empty list" in error_of(probe(splits=[1, 1]))
    assert "eval[0].splits[0]: expected an integer" in error_of(probe(splits=["one"]))


def test_splits_need_a_dataset_with_a_split_argument():
    assert "eval[0].splits: dataset 'moving_squares' has no 'split' argument" in error_of(probe(splits=[1, 2]))


def test_same_result_key_twice_asks_for_a_label():
    message = error_of(probe(), probe(max_iter=5))
    assert "eval[1]" in message and "label" in message
    parse_recipe(toy_raw(probe(), probe(max_iter=5, label="probe_short")))  # a label tells them apart


def test_resolved_tables_fill_defaults_and_round_trip():
    recipe = parse_recipe(toy_raw(probe(), {"protocol": "finetune", "branch": "sup", "epochs": 3, "train_data": TRAIN_DATA, "test_data": TEST_DATA}))
    first, second = recipe.evaluations
    assert first["max_iter"] == LinearProbeOptions().max_iter and first["branch"] == "concat"
    assert first["test_data"]["frames"] == 4  # the dataset's defaults are recorded too
    assert second["epochs"] == 3 and second["lr"] == FinetuneOptions().lr
    again = parse_recipe(tomllib.loads(dump_toml(recipe.raw)))
    assert again.evaluations == recipe.evaluations
    specs = build_eval_specs(recipe.evaluations, get_registry(), list(recipe.tasks))
    assert [s.result_key(None) for s in specs] == ["linear_probe/moving_squares/concat", "finetune/moving_squares/sup"]
    assert specs[1].options == FinetuneOptions(epochs=3)
