"""Grid pooling of frozen features ([[eval]] pool = "grid"): cell means of the feature map, their
own cache entries and result names, and one-line refusals of bad pooling keys."""

import numpy as np
import pytest
import torch
from eval_toy import TEST_DATA, TRAIN_DATA, toy_raw

from hcframe.engine.trainer import build_model
from hcframe.evaluation import extract_features, run_evaluations
from hcframe.evaluation.features import Pooling
from hcframe.recipe import RecipeError, parse_recipe
from hcframe.transforms import Normalize

pytestmark = pytest.mark.usefixtures("testkit")

PROBE = {"protocol": "linear_probe", "branch": "sup", "train_data": TRAIN_DATA, "test_data": TEST_DATA, "max_iter": 50}


def _toy(*evals):
    recipe = parse_recipe(toy_raw(*evals))
    torch.manual_seed(0)
    model = build_model(recipe)
    model.eval()
    return recipe, model


def _cell_means(fmap: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """Reference: [D, T, H, W] -> the mean of each of grid = (t, h, w) equal blocks, flattened
    channel first, then time, height, width (sizes divide evenly here)."""
    d, t, h, w = fmap.shape
    gt, gh, gw = grid
    out = np.empty((d, gt, gh, gw))
    for a in range(gt):
        for b in range(gh):
            for c in range(gw):
                block = fmap[:, a * t // gt : (a + 1) * t // gt, b * h // gh : (b + 1) * h // gh, c * w // gw : (c + 1) * w // gw]
                out[:, a, b, c] = block.mean(axis=(1, 2, 3))
    return out.reshape(-1)


def test_grid_features_are_the_cell_means_of_each_branch_map():
    recipe, model = _toy(PROBE)
    dataset = recipe.data.build()
    dataset.num_views = 1
    pooling = Pooling("grid", (2, 2, 2))
    sup = extract_features(model, "sup", dataset, Normalize(), torch.device("cpu"), batch_size=5, pooling=pooling)
    both = extract_features(model, "concat", dataset, Normalize(), torch.device("cpu"), batch_size=5, pooling=pooling)
    glob = extract_features(model, "sup", dataset, Normalize(), torch.device("cpu"), batch_size=5)
    dim = model.feature_dim
    assert sup.features.shape == (16, 1, dim * 8) and both.features.shape == (16, 1, 2 * dim * 8)
    assert glob.features.shape == (16, 1, dim)
    batch = Normalize()({"views": dataset[3]["views"][None]}, train=False)
    with torch.no_grad():
        shared = model.trunk(batch["views"][0])
        maps = {name: branch(shared)[0].double().numpy() for name, branch in model.branches.items()}
    assert maps["sup"].shape[1:] == (4, 4, 4)  # 2x2x2 cells of 2x2x2 positions
    np.testing.assert_allclose(sup.features[3, 0].double().numpy(), _cell_means(maps["sup"], (2, 2, 2)), atol=1e-5)
    expected_concat = np.concatenate([_cell_means(maps[n], (2, 2, 2)) for n in model.branches])
    np.testing.assert_allclose(both.features[3, 0].double().numpy(), expected_concat, atol=1e-5)
    np.testing.assert_allclose(glob.features[3, 0].double().numpy(), maps["sup"].mean(axis=(1, 2, 3)), atol=1e-5)


def test_global_and_grid_probes_have_their_own_results_and_cache_files(tmp_path):
    grid = {**PROBE, "pool": "grid", "grid": [1, 2, 2]}
    recipe, model = _toy(PROBE, grid)
    assert recipe.evaluations[1]["pool"] == "grid" and recipe.evaluations[1]["grid"] == [1, 2, 2]
    assert recipe.evaluations[0]["pool"] == "global" and recipe.evaluations[0]["source"] == "encoder"
    results = run_evaluations(recipe, model, tmp_path, device=torch.device("cpu"), log=lambda m: None)
    assert set(results) == {"linear_probe/moving_squares/sup", "linear_probe/moving_squares/sup/grid1x2x2"}
    dims = sorted(torch.load(p, weights_only=True)["features"].shape[-1] for p in (tmp_path / "features").glob("*.pt"))
    assert dims == [model.feature_dim] * 2 + [4 * model.feature_dim] * 2  # (train, test) x (global, grid)
    for metrics in results.values():
        assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0


def test_evaluations_of_one_dataset_share_one_extraction_pass_with_the_features_each_would_extract(tmp_path):
    """Evaluations that read other branches or poolings of the same data are extracted together:
    each dataset is read once, and every cached feature set is bit-identical to what that
    evaluation extracts on its own."""
    evals = [PROBE, {**PROBE, "branch": "concat"}, {**PROBE, "pool": "grid", "grid": [1, 2, 2]},
             {"protocol": "retrieval", "branch": "concat", "train_data": TRAIN_DATA, "test_data": TEST_DATA, "ks": [1]}]
    recipe, model = _toy(*evals)
    lines: list[str] = []
    results = run_evaluations(recipe, model, tmp_path / "shared", device=torch.device("cpu"), log=lines.append)
    extracting = [line for line in lines if line.startswith("extracting features")]
    assert len(extracting) == 2, extracting  # the train data, then the test data: one pass each
    assert all("branch sup (global pooling), branch concat (global pooling), branch sup (grid1x2x2 pooling)" in line
               for line in extracting)
    shared = {torch.load(p, weights_only=True)["description"]: torch.load(p, weights_only=True)["features"]
              for p in (tmp_path / "shared" / "features").glob("*.pt")}
    assert len(shared) == 6  # (train, test) x (sup, concat, sup grid)
    alone: dict[str, torch.Tensor] = {}
    for i, table in enumerate(evals[:3]):
        one, _ = _toy(table)
        assert run_evaluations(one, model, tmp_path / f"alone{i}", device=torch.device("cpu"), log=lambda m: None)
        for p in (tmp_path / f"alone{i}" / "features").glob("*.pt"):
            stored = torch.load(p, weights_only=True)
            alone[stored["description"]] = stored["features"]
    assert set(alone) == set(shared)
    for description, features in shared.items():
        assert torch.equal(features, alone[description]), description
    assert set(results) == {"linear_probe/moving_squares/sup", "linear_probe/moving_squares/concat",
                            "linear_probe/moving_squares/sup/grid1x2x2", "retrieval/moving_squares/concat"}


def test_bad_pooling_keys_are_refused_in_one_line():
    def error_of(**extra):
        with pytest.raises(RecipeError) as info:
            parse_recipe(toy_raw({**PROBE, **extra}), source="toy.toml")
        assert "\n" not in str(info.value)
        return str(info.value)

    assert error_of(pool="max").startswith("toy.toml: eval[0].pool:")
    assert "eval[0].grid: expected three positive cell counts [t, h, w], got [2, 2]" in error_of(pool="grid", grid=[2, 2])
    assert "eval[0].grid" in error_of(pool="grid", grid=[1, 0, 2])
    assert "eval[0].source" in error_of(source="teacher")
    assert "eval[0].branch: source = \"targets\" reads the part targets of one task" in error_of(branch="concat", source="targets")
    finetune = {"protocol": "finetune", "branch": "sup", "train_data": TRAIN_DATA, "test_data": TEST_DATA, "pool": "grid"}
    with pytest.raises(RecipeError, match=r"eval\[0\]\.pool: unknown key for protocol 'finetune'"):
        parse_recipe(toy_raw(finetune))


def test_targets_of_a_task_without_part_targets_is_a_clear_error(tmp_path):
    recipe, model = _toy({**PROBE, "source": "targets"})
    with pytest.raises(ValueError, match=r"eval\[0\]: source = \"targets\" but task 'sup' trains on no part targets"):
        run_evaluations(recipe, model, tmp_path, device=torch.device("cpu"), log=lambda m: None)


def test_targets_of_a_task_without_part_targets_is_refused_before_any_work():
    from hcframe.config import build_run

    recipe = parse_recipe(toy_raw({**PROBE, "source": "targets"}), source="toy.toml")
    with pytest.raises(RecipeError) as info:
        build_run(recipe, train_data=False)
    assert "eval[0].source: \"targets\" but task 'sup' trains on no part targets" in str(info.value)
    assert "\n" not in str(info.value)


def test_result_names_match_the_pooling_names():
    from hcframe.eval_tables import FeatureOptions

    for pool, grid in (("global", [1, 2, 2]), ("grid", [2, 4, 4]), ("grid", [1, 1, 3])):
        assert FeatureOptions(pool=pool, grid=grid).pooling_name() == Pooling(pool, tuple(grid)).name()
    assert Pooling("grid", (2, 4, 4)).name() == "grid2x4x4" and Pooling().name() == "global"
