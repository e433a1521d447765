"""torchvision's video-model weights in hcframe: key layouts, ``[model] init``, S3D's pooling, MC3.

torchvision does not install beside the CPU torch, so its state dicts are built here from the
encoders' own weights under torchvision's key names. Those names and shapes are written in this
file from torchvision's source (``torchvision/models/video/resnet.py`` and ``s3d.py``: module
structure, ``midplanes`` formula, Inception widths) independently of the plugin's converter, and
tied to torchvision's published parameter counts (its weights' ``num_params`` metadata).
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from click.testing import CliRunner

import hcframe
from hcframe.cli import cli
from hcframe.engine.trainer import build_model
from hcframe.recipe import RecipeError, dump_toml, load_recipe, parse_recipe
from hcframe_backbones import MC3, R2Plus1D, R3D, S3D, windowed_mean_pool

# --- torchvision's keys, written from its source ---------------------------------------------------
# torchvision's num_params for its Kinetics-400 weights (classifier included).
TORCHVISION_NUM_PARAMS = {"r3d_18": 33_371_472, "mc3_18": 11_695_440, "r2plus1d_18": 31_505_325, "s3d": 8_320_048}


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,), f"{prefix}.running_mean": (channels,),
            f"{prefix}.running_var": (channels,), f"{prefix}.num_batches_tracked": ()}


def torchvision_video_resnet_keys(arch: str, width: int = 64, blocks=(2, 2, 2, 2), num_classes: int = 400) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of torchvision's ``VideoResNet`` for r3d_18 / mc3_18 / r2plus1d_18 (its
    ``width`` generalised: torchvision's stage widths are 64, 128, 256, 512 and the R(2+1)D stem's
    middle width 45)."""
    keys: dict[str, tuple[int, ...]] = {}
    if arch == "r2plus1d_18":  # R2Plus1dStem: conv 1x7x7 -> 45, BN, ReLU, conv 3x1x1 -> 64, BN, ReLU
        mid = round(45 * width / 64)
        keys["stem.0.weight"] = (mid, 3, 1, 7, 7)
        keys.update(_bn("stem.1", mid))
        keys["stem.3.weight"] = (width, mid, 3, 1, 1)
        keys.update(_bn("stem.4", width))
    else:  # BasicStem: conv 3x7x7, BN, ReLU
        keys["stem.0.weight"] = (width, 3, 3, 7, 7)
        keys.update(_bn("stem.1", width))
    inplanes = width
    for layer, (planes, depth) in enumerate(zip((width, 2 * width, 4 * width, 8 * width), blocks), start=1):
        stride = 1 if layer == 1 else 2
        for b in range(depth):
            p = f"layer{layer}.{b}"
            block_in = inplanes if b == 0 else planes
            midplanes = (block_in * planes * 3 * 3 * 3) // (block_in * 3 * 3 + 3 * planes)  # BasicBlock.__init__
            for conv, conv_in in (("conv1", block_in), ("conv2", planes)):
                if arch == "r2plus1d_18":  # Conv2Plus1D: 1x3x3 -> midplanes, BN, ReLU, 3x1x1
                    keys[f"{p}.{conv}.0.0.weight"] = (midplanes, conv_in, 1, 3, 3)
                    keys.update(_bn(f"{p}.{conv}.0.1", midplanes))
                    keys[f"{p}.{conv}.0.3.weight"] = (planes, midplanes, 3, 1, 1)
                elif arch == "mc3_18" and layer > 1:  # Conv3DNoTemporal
                    keys[f"{p}.{conv}.0.weight"] = (planes, conv_in, 1, 3, 3)
                else:  # Conv3DSimple
                    keys[f"{p}.{conv}.0.weight"] = (planes, conv_in, 3, 3, 3)
                keys.update(_bn(f"{p}.{conv}.1", planes))
            if b == 0 and (stride != 1 or inplanes != planes):  # _make_layer's downsample
                keys[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1, 1)
                keys.update(_bn(f"{p}.downsample.1", planes))
        inplanes = planes
    keys["fc.weight"] = (num_classes, 8 * width)
    keys["fc.bias"] = (num_classes,)
    return keys


# torchvision S3D.features: index -> SepInceptionBlock3D(in_planes, b0, b1_mid, b1, b2_mid, b2, b3)
S3D_INCEPTION = {
    5: (192, 64, 96, 128, 16, 32, 32), 6: (256, 128, 128, 192, 32, 96, 64),
    8: (480, 192, 96, 208, 16, 48, 64), 9: (512, 160, 112, 224, 24, 64, 64), 10: (512, 128, 128, 256, 24, 64, 64),
    11: (512, 112, 144, 288, 32, 64, 64), 12: (528, 256, 160, 320, 32, 128, 128),
    14: (832, 256, 160, 320, 32, 128, 128), 15: (832, 384, 192, 384, 48, 128, 128),
}


def torchvision_s3d_keys(num_classes: int = 400) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of torchvision's ``S3D`` (Conv3dNormActivation = conv, BN, ReLU;
    TemporalSeparableConv = two of them, 1xkxk then kx1x1)."""
    keys: dict[str, tuple[int, ...]] = {}

    def cna(prefix, cin, cout, kernel):
        keys[f"{prefix}.0.weight"] = (cout, cin, *kernel)
        keys.update(_bn(f"{prefix}.1", cout))

    def separable(prefix, cin, cout, k):
        cna(f"{prefix}.0", cin, cout, (1, k, k))
        cna(f"{prefix}.1", cout, cout, (k, 1, 1))

    separable("features.0", 3, 64, 7)
    cna("features.2", 64, 64, (1, 1, 1))
    separable("features.3", 64, 192, 3)
    for i, (cin, b0, b1m, b1, b2m, b2, b3) in S3D_INCEPTION.items():
        p = f"features.{i}"
        cna(f"{p}.branch0", cin, b0, (1, 1, 1))
        cna(f"{p}.branch1.0", cin, b1m, (1, 1, 1))
        separable(f"{p}.branch1.1", b1m, b1, 3)
        cna(f"{p}.branch2.0", cin, b2m, (1, 1, 1))
        separable(f"{p}.branch2.1", b2m, b2, 3)
        cna(f"{p}.branch3.1", cin, b3, (1, 1, 1))  # branch3.0 is the max-pool
    keys["classifier.1.weight"] = (num_classes, 1024, 1, 1, 1)
    keys["classifier.1.bias"] = (num_classes,)
    return keys


# The same renaming, written here for the tests' own files: torchvision S3D features index -> stage module.
S3D_INDEX_TO_MODULE = {0: "stem", 2: "block2.1", 3: "block2.2", 5: "block3.1", 6: "block3.2", 8: "block4.1", 9: "block4.2",
                       10: "block4.3", 11: "block4.4", 12: "block4.5", 14: "block5.1", 15: "block5.2"}


def as_torchvision(encoder: torch.nn.Module, arch: str, num_classes: int = 400) -> dict[str, torch.Tensor]:
    """The encoder's weights under torchvision's names (the test's renaming), plus a classifier."""
    out = {}
    for key, value in encoder.state_dict().items():
        rest = key.removeprefix("stages.")
        if arch == "s3d":
            for index, module in S3D_INDEX_TO_MODULE.items():
                if rest.startswith(module + "."):
                    out[f"features.{index}.{rest[len(module) + 1:]}"] = value.clone()
                    break
            else:
                raise AssertionError(f"no torchvision counterpart for {key}")
        else:
            out[rest] = value.clone()
    dim = encoder.feature_dim
    if arch == "s3d":
        out["classifier.1.weight"] = torch.randn(num_classes, dim, 1, 1, 1)
        out["classifier.1.bias"] = torch.randn(num_classes)
    else:
        out["fc.weight"] = torch.randn(num_classes, dim)
        out["fc.bias"] = torch.randn(num_classes)
    return out


def _numel(shapes) -> int:
    """Parameters only: batch norms' running statistics and counters are buffers."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(math.prod(s) for k, s in shapes.items() if not k.endswith(buffers))


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


# --- full-size key lists (shapes only; the models are built, not run) --------------------------------
@pytest.mark.parametrize("arch, factory", [("r3d_18", R3D), ("mc3_18", MC3), ("r2plus1d_18", R2Plus1D), ("s3d", S3D)])
def test_published_encoders_write_exactly_torchvisions_keys_and_shapes(arch, factory):
    expected = torchvision_s3d_keys() if arch == "s3d" else torchvision_video_resnet_keys(arch)
    assert _numel(expected) == TORCHVISION_NUM_PARAMS[arch]  # the hand-written list is torchvision's model
    encoder = factory()
    (layout,) = encoder.state_dict_layouts()
    assert layout.name == "torchvision"
    written = {layout.from_encoder_key(k): tuple(v.shape) for k, v in encoder.state_dict().items()}
    classifier = {k: v for k, v in expected.items() if k.startswith(("fc.", "classifier."))}
    assert written == {k: v for k, v in expected.items() if k not in classifier}
    assert len(classifier) == 2 and all(layout.drops(k) for k in classifier)
    assert not any(layout.drops(k) for k in written)
    for key in expected:
        if key not in classifier:
            assert layout.from_encoder_key(layout.to_encoder_key(key)) == key


def test_s3d_g_offers_no_torchvision_layout():
    assert S3D(width=4, gating=True).state_dict_layouts() == ()


def test_mc3_convolves_layers_2_to_4_in_space_only_and_keeps_time():
    encoder = MC3(width=4, blocks=[1, 1, 1, 1]).eval()
    out = encoder(torch.randn(1, 3, 8, 32, 32))
    assert tuple(out.feature_map.shape) == (1, 32, 8, 2, 2)  # space /16, time kept
    assert encoder.stages["layer1"][0].conv1[0].kernel_size == (3, 3, 3)
    assert all(encoder.stages[s][0].conv1[0].kernel_size == (1, 3, 3) for s in ("layer2", "layer3", "layer4"))


# --- [model] init: loading and equal outputs ------------------------------------------------------
TINY = {
    "r3d_18": (R3D, {"width": 4, "blocks": [1, 1, 1, 1]}, "layer3"),
    "mc3_18": (MC3, {"width": 4, "blocks": [2, 1, 1, 1]}, "layer2"),
    "r2plus1d_18": (R2Plus1D, {"width": 4, "blocks": [1, 2, 1, 1]}, "layer4"),
    "s3d": (S3D, {"width": 4}, "block4"),
}


def _raw(arch, init, split, encoder_args, tasks=None):
    return {
        "data": {"name": "moving_squares", "num_videos": 8, "frames": 8, "size": 32},
        "transform": {"name": "normalize"},
        "model": {"split": split, "init": str(init), "encoder": {"name": arch, **encoder_args}},
        "tasks": tasks or {"sup": {"name": "supervised", "num_classes": 4}, "bright": {"name": "brightness"}},
        "train": {"steps": 1, "batch_size": 4, "device": "cpu"},
    }


@pytest.fixture(scope="module", autouse=True)
def _testkit():
    hcframe.register_plugin("hcframe_testkit")


@pytest.mark.parametrize("arch", list(TINY))
def test_torchvision_state_dict_initialises_trunk_and_every_branch_with_equal_outputs(arch, tmp_path):
    factory, args, split = TINY[arch]
    source = factory(**args).eval()
    for m in source.modules():  # non-trivial statistics, so a batch norm that was not loaded shows
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    path = tmp_path / f"{arch}_kinetics.pth"
    torch.save(as_torchvision(source, arch), path)
    recipe = parse_recipe(_raw(arch, path, split, args))
    lines = []
    model = build_model(recipe, log=lines.append).eval()
    assert len(lines) == 1 and lines[0].startswith("model.init: ") and "torchvision state dict" in lines[0]
    assert ("fc.weight, fc.bias" if arch != "s3d" else "classifier.1.weight, classifier.1.bias") in lines[0]
    clips = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        reference = source(clips).pooled
        for branch in ("sup", "bright"):
            torch.testing.assert_close(model.encode(clips, branch), reference, rtol=0, atol=0)
    own = source.state_dict()
    state = model.state_dict()
    for key, value in own.items():
        stage = key.split(".")[1]
        in_trunk = stage in model.trunk.stages
        copies = [f"trunk.{key}"] if in_trunk else [f"branches.{b}.{key}" for b in ("sup", "bright")]
        for copy_key in copies:
            assert torch.equal(state[copy_key], value), copy_key


def test_a_momentum_encoder_starts_from_the_pretrained_weights_too(tmp_path):
    factory, args, _ = TINY["r2plus1d_18"]
    source = factory(**args)
    path = tmp_path / "r2plus1d.pth"
    torch.save(as_torchvision(source, "r2plus1d_18"), path)
    tasks = {"moco": {"name": "moco", "queue_size": 16, "hidden_dim": 8, "out_dim": 8}}
    model = build_model(parse_recipe(_raw("r2plus1d_18", path, "layer3", args, tasks)))
    key_encoder = model.tasks["moco"].key_encoder.module.state_dict()
    for key, value in source.state_dict().items():
        stage = key.split(".")[1]
        copied = f"trunk.{key}" if stage in model.trunk.stages else f"branch.{key}"
        assert torch.equal(key_encoder[copied], value), copied


# --- refusals: one line, exit 2, nothing written ----------------------------------------------------
def _cli_run(recipe_path, out_dir):
    return CliRunner().invoke(cli, ["run", str(recipe_path), "--output", str(out_dir)])


def _broken(kind: str, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    state = dict(state)
    if kind == "missing":
        del state["layer3.0.downsample.1.running_var"]
        return state, "missing key 'layer3.0.downsample.1.running_var'"
    if kind == "unexpected":
        state["layer5.0.conv1.0.weight"] = torch.zeros(1)
        return state, "unexpected key 'layer5.0.conv1.0.weight'"
    state["layer2.0.conv2.0.weight"] = torch.zeros(8, 8, 3, 3, 1)
    return state, "key 'layer2.0.conv2.0.weight' has shape (8, 8, 3, 3, 1), the encoder's is (8, 8, 3, 3, 3)"


@pytest.mark.parametrize("kind", ["missing", "unexpected", "shape"])
def test_a_file_that_does_not_fit_is_refused_before_any_work(kind, tmp_path):
    factory, args, split = TINY["r3d_18"]
    state, expected = _broken(kind, as_torchvision(factory(**args), "r3d_18"))
    weights = tmp_path / "broken.pth"
    torch.save(state, weights)
    recipe = tmp_path / "r.toml"
    recipe.write_text(dump_toml(_raw("r3d_18", weights, split, args)))
    out = tmp_path / "run"
    result = _cli_run(recipe, out)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: {recipe}: model.init: {weights}: does not fit the torchvision layout of encoder 'r3d_18': {expected}"]
    assert not out.exists()
    with pytest.raises(RecipeError, match="model.init: "):
        load_recipe(recipe)


def test_other_mismatches_name_the_key(tmp_path):
    # an R(2+1)D file for an R3D recipe: the stem's second convolution has no counterpart
    r2, r2_args, _ = TINY["r2plus1d_18"]
    path = tmp_path / "r2plus1d.pth"
    torch.save(as_torchvision(r2(**{**r2_args, "blocks": [1, 1, 1, 1]}), "r2plus1d_18"), path)
    with pytest.raises(RecipeError) as info:
        parse_recipe(_raw("r3d_18", path, "layer3", TINY["r3d_18"][1]))
    # R3D's 8 block convolutions are missing (2 per block, 4 blocks); R(2+1)D's stem.3 conv and stem.4
    # batch norm (1 + 5 keys) and its 8 factorised convolutions (7 keys each) are unexpected.
    message = str(info.value)
    assert "missing key 'layer1.0.conv1.0.weight' (and 7 more)" in message
    assert "unexpected key 'stem.3.weight' (and 61 more)" in message
    assert "key 'stem.0.weight' has shape (3, 3, 1, 7, 7), the encoder's is (4, 3, 3, 7, 7)" in message
    assert "\n" not in message
    # an S3D file for a video ResNet: not a layout it reads
    s3d_path = tmp_path / "s3d.pth"
    torch.save(as_torchvision(S3D(width=4), "s3d"), s3d_path)
    with pytest.raises(RecipeError, match=r"not an hcframe checkpoint, an encoder export, or a state dict in a layout encoder 'r3d_18' reads \(torchvision\); its first key is 'features\.0\.0\.0\.weight'"):
        parse_recipe(_raw("r3d_18", s3d_path, "layer3", TINY["r3d_18"][1]))
    # S3D-G has gates torchvision's S3D lacks
    with pytest.raises(RecipeError, match=r"reads \(none\)"):
        parse_recipe(_raw("s3d", s3d_path, "block4", {"width": 4, "gating": True}))


# --- export to torchvision's layout ------------------------------------------------------------------
def test_export_encoder_writes_torchvision_keys_without_the_classifier(tmp_path):
    factory, args, split = TINY["s3d"]
    source = factory(**args).eval()
    path = tmp_path / "s3d.pth"
    torch.save(as_torchvision(source, "s3d"), path)
    recipe = tmp_path / "r.toml"
    recipe.write_text(dump_toml(_raw("s3d", path, split, args)))
    out = tmp_path / "exported_tv.pth"
    result = CliRunner().invoke(cli, ["export-encoder", str(path), str(out), "--recipe", str(recipe), "--format", "torchvision"])
    assert result.exit_code == 0, result.output
    written = torch.load(out, weights_only=True)
    expected = as_torchvision(source, "s3d")
    assert sorted(written) == sorted(k for k in expected if not k.startswith("classifier."))
    assert all(torch.equal(written[k], expected[k]) for k in written)
    bad = CliRunner().invoke(cli, ["export-encoder", str(path), str(tmp_path / "x.pth"), "--recipe", str(recipe), "--format", "mmaction"])
    assert bad.exit_code == 2 and "--format mmaction: encoder 's3d' is written as hcframe or torchvision" in bad.output
    assert not (tmp_path / "x.pth").exists()


# --- S3D pooling: torchvision's head ----------------------------------------------------------------
def reference_window_mean(fmap: torch.Tensor, kernel: tuple[int, int, int]) -> torch.Tensor:
    """torchvision S3D's head before its (linear) classifier, in float64 with explicit windows:
    AvgPool3d(kernel, stride=1) -> mean over the pooled positions. torchvision needs the map to be
    at least as large as the kernel; here smaller maps use the whole map as the one window."""
    x = fmap.double()
    t, h, w = x.shape[2:]
    kt, kh, kw = min(kernel[0], t), min(kernel[1], h), min(kernel[2], w)
    windows = [x[:, :, i:i + kt, j:j + kh, k:k + kw].mean(dim=(2, 3, 4))
               for i, j, k in itertools.product(range(t - kt + 1), range(h - kh + 1), range(w - kw + 1))]
    return torch.stack(windows).mean(0)


@pytest.mark.parametrize("size", [(2, 7, 7), (4, 7, 7), (8, 7, 7), (2, 8, 8), (3, 9, 8), (1, 4, 4), (1, 1, 1)])
def test_s3d_pooling_is_torchvisions_average_pool_then_mean(size):
    fmap = torch.randn(2, 5, *size, dtype=torch.float64)
    torch.testing.assert_close(windowed_mean_pool(fmap, (2, 7, 7)), reference_window_mean(fmap, (2, 7, 7)), rtol=1e-12, atol=1e-12)
    if size == (4, 7, 7):  # 32 frames at 224: the time steps weigh 1/6, 1/3, 1/3, 1/6
        weights = torch.tensor([1, 2, 2, 1], dtype=torch.float64) / 6
        by_hand = (fmap.mean(dim=(3, 4)) * weights).sum(-1)
        torch.testing.assert_close(windowed_mean_pool(fmap, (2, 7, 7)), by_hand, rtol=1e-12, atol=1e-12)


def test_s3d_encoder_pools_like_torchvision_at_32_frames_and_a_global_mean_on_request():
    encoder = S3D(width=4).eval()
    clips = torch.randn(1, 3, 32, 224, 224)
    with torch.no_grad():
        out = encoder(clips)
    assert tuple(out.feature_map.shape[2:]) == (4, 7, 7)
    torch.testing.assert_close(out.pooled.double(), reference_window_mean(out.feature_map, (2, 7, 7)), rtol=1e-6, atol=1e-6)
    assert (out.pooled - out.feature_map.mean(dim=(2, 3, 4))).abs().max() > 1e-3  # not the global mean
    plain = S3D(width=4, pool_kernel=[1, 1, 1])
    torch.testing.assert_close(plain.pool(out.feature_map), out.feature_map.mean(dim=(2, 3, 4)))
    with pytest.raises(ValueError, match=r"^s3d: pool_kernel must be a list of 3 integers >= 1, got \[2, 7\]$"):
        S3D(width=4, pool_kernel=[2, 7])


def test_only_a_file_without_any_batch_norm_counter_gets_them_set_to_zero(tmp_path):
    # torch's rule for files written before torch 0.4.1 added num_batches_tracked
    factory, args, split = TINY["r3d_18"]
    state = as_torchvision(factory(**args), "r3d_18")
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(old, path)
    lines = []
    model = build_model(parse_recipe(_raw("r3d_18", path, split, args)), log=lines.append)
    assert "no BatchNorm num_batches_tracked counters (written before torch 0.4.1)" in lines[0]
    assert all(int(v) == 0 for k, v in model.state_dict().items() if k.endswith("num_batches_tracked"))
    one_missing = dict(state)
    del one_missing["layer4.0.conv1.1.num_batches_tracked"]
    torch.save(one_missing, path)
    with pytest.raises(RecipeError, match=r"missing key 'layer4\.0\.conv1\.1\.num_batches_tracked'$"):
        parse_recipe(_raw("r3d_18", path, split, args))


def test_a_trained_branch_exports_to_torchvision_and_initialises_a_new_run_with_equal_outputs(tmp_path):
    factory, args, split = TINY["r2plus1d_18"]
    raw = _raw("r2plus1d_18", "", split, args)
    del raw["model"]["init"]
    recipe = parse_recipe(raw)
    model = build_model(recipe).eval()
    with torch.no_grad():  # make the two branches differ, so the export shows which one it took
        for p in model.branches["bright"].parameters():
            p.add_(0.01 * torch.randn_like(p))
    checkpoint = tmp_path / "step_00000001.pt"
    torch.save({"format": 1, "model": model.state_dict(), "recipe_sha256": recipe.sha256(), "step": 1}, checkpoint)
    recipe_file = tmp_path / "recipe.toml"
    recipe_file.write_text(recipe.to_toml())
    out = tmp_path / "bright_torchvision.pth"
    result = CliRunner().invoke(cli, ["export-encoder", str(checkpoint), str(out), "--recipe", str(recipe_file),
                                      "--branch", "bright", "--format", "torchvision"])
    assert result.exit_code == 0, result.output
    written = torch.load(out, weights_only=True)
    expected = torchvision_video_resnet_keys("r2plus1d_18", width=4, blocks=args["blocks"])
    assert {k: tuple(v.shape) for k, v in written.items()} == {k: v for k, v in expected.items() if not k.startswith("fc.")}
    # the torchvision file initialises a recipe without a split: its encoder is trunk + 'bright'
    fresh = build_model(parse_recipe(_raw("r2plus1d_18", out, "none", args))).eval()
    clips = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.encode(clips), model.encode(clips, "bright"), rtol=0, atol=0)
        assert not torch.equal(fresh.encode(clips), model.encode(clips, "sup"))


def test_eval_linear_probes_a_torchvision_file_like_the_same_weights_in_an_hcframe_checkpoint(tmp_path):
    factory, args, split = TINY["r3d_18"]
    source = factory(**args)
    tv = tmp_path / "r3d_kinetics.pth"
    torch.save(as_torchvision(source, "r3d_18"), tv)
    raw = _raw("r3d_18", "", split, args)
    del raw["model"]["init"]
    raw["eval"] = [{"protocol": "linear_probe", "branch": "bright", "max_iter": 30,
                    "train_data": {"name": "moving_squares", "num_videos": 12, "frames": 8, "size": 32, "seed": 0},
                    "test_data": {"name": "moving_squares", "num_videos": 8, "frames": 8, "size": 32, "seed": 1}}]
    recipe = tmp_path / "probe.toml"
    recipe.write_text(dump_toml(raw))
    # the same weights placed by hand into every copy of a model, saved as an hcframe checkpoint
    model = build_model(parse_recipe(raw))
    own = {k.removeprefix("stages."): v for k, v in source.state_dict().items()}
    model.trunk.stages.load_state_dict({k: v for k, v in own.items() if k.split(".")[0] in model.trunk.stages})
    for branch in model.branches.values():
        branch.stages.load_state_dict({k: v for k, v in own.items() if k.split(".")[0] in branch.stages})
    checkpoint = tmp_path / "by_hand.pt"
    torch.save({"model": model.state_dict(), "step": 0}, checkpoint)
    reports = []
    for name, weights in (("tv", tv), ("hand", checkpoint)):
        result = CliRunner().invoke(cli, ["eval", str(recipe), "--checkpoint", str(weights), "--output", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        reports.append(json.loads((tmp_path / name / "eval.json").read_text()))
    assert reports[0]["eval"] == reports[1]["eval"]
    assert reports[0]["weights"] == (f"{len(own)} tensors from torchvision state dict {tv}; dropped (no counterpart in the encoder): fc.weight, fc.bias")
