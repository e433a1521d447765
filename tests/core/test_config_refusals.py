"""A bad recipe is refused before any work, everywhere (:mod:`hcframe.config`).

Every case runs through ``hcframe run``, ``hcframe run --dry-run`` and ``hcframe info`` and must
give exit code 2 and exactly one stderr line ``error: <recipe file>: <key path>: ...`` (no
traceback), and write nothing: no run directory, no file in the working directory, no synthetic
world in the cache. The cases are those of issue 11 (values that used to be checked only when the
run had started, inside it) and the ones found while fixing it. In process (click's runner) for
speed; the file cases that could hang or exhaust memory, the plugins' commands and one real
traceback-free stderr run as subprocesses.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hcframe.registry import ENV_DISABLE_AUTOLOAD, ENV_PLUGINS, ENV_STRICT, reset_registry

SUPPORT = Path(__file__).resolve().parents[1] / "support"

#: Fast to build: the test kit's 8 moving squares (4 classes), a width-4 R(2+1)D, simclr on its own
#: branch, an online probe and one linear-probe evaluation.
BASE = """\
[data]
name = "moving_squares"
num_videos = 8
frames = 4
size = 16

[transform]
name = "normalize"

[model]
split = "layer3"
[model.encoder]
name = "r2plus1d_18"
width = 4
blocks = [1, 1, 1, 1]

[tasks.contrastive]
name = "simclr"
temperature = 0.1
hidden_dim = 16
out_dim = 8

[tasks.probe]
name = "online_probe"
num_classes = 4

[optim]
name = "adamw"
lr = 0.002

[train]
steps = 1
batch_size = 4
device = "cpu"

[[eval]]
protocol = "linear_probe"
train_data = { name = "moving_squares", num_videos = 8 }
test_data = { name = "moving_squares", num_videos = 4, seed = 1 }
"""

UCF = BASE.replace('[data]\nname = "moving_squares"\nnum_videos = 8\nframes = 4\nsize = 16\n', '[data]\nname = "ucf101"\nroot = "{tmp}/ucf"\n')
SYNTHETIC = BASE.replace('[data]\nname = "moving_squares"\nnum_videos = 8\nframes = 4\nsize = 16\n', '[data]\nname = "synthetic_humans"\n')
assert UCF != BASE and SYNTHETIC != BASE

FOLDER = object()  # a folder where the recipe file should be

#: id: (recipe text ({tmp} is the test's folder), --set overrides, the error line after the file).
CASES: dict[str, tuple[str | bytes | object, list[str], str]] = {
    # --- issue 11: values checked only once the run had started --------------------------------
    "encoder width 0": (BASE, ["model.encoder.width=0"], "model.encoder.width: must be an integer >= 1, got 0"),
    "clip_len 0 (before generating a world)": (SYNTHETIC, ["data.clips.clip_len=0"], "data.clips.clip_len: expected an integer >= 1, got 0"),
    # --- the video datasets' nested clip-sampling table (checked against ClipSampling's fields) ----
    "unknown key in [data.clips]": (SYNTHETIC, ["data.clips.clip_lne=4"], "data.clips.clip_lne: unknown key; did you mean 'clip_len'?"),
    "a clip key written flat, as before the clips table": (
        SYNTHETIC, ["data.clip_len=4"],
        "data.clip_len: unknown key for dataset 'synthetic_humans'; it belongs in the settings table: write data.clips.clip_len",
    ),
    "unknown key in an eval dataset's clips": (
        SYNTHETIC, ['eval.0.test_data={name = "synthetic_humans", clips = {num_crop = 2}}'],
        "eval[0].test_data.clips.num_crop: unknown key; did you mean 'num_crops'?",
    ),
    "clips that is not a table": (SYNTHETIC, ["data.clips=8"], "data.clips: expected a table of clip_len, stride,"),
    "crop larger than the world's frames": (
        SYNTHETIC, ["data.clips.crop_size=40"], "data.clips.crop_size: 40 is larger than short_side 32; use crop_size <= short_side",
    ),
    "blocks of the wrong length": (BASE, ["model.encoder.blocks=[1, 1]"], "model.encoder.blocks: must be a list of 4 integers >= 1, got [1, 1]"),
    "negative temperature": (BASE, ["tasks.contrastive.temperature=-0.1"], "tasks.contrastive.temperature: must be a number > 0, got -0.1"),
    "dataset root that does not exist": (
        UCF.replace("{tmp}/ucf", "{tmp}/nowhere"), [], "data.root: {tmp}/nowhere: UCF101 root not found (expected a folder)",
    ),
    "UCF101 split 4": (UCF, ["data.split=4"], "data.split: expected 1, 2 or 3, got 4"),
    "UCF101 subset val": (UCF, ['data.subset="val"'], "data.subset: expected one of train, test, got 'val'"),
    "model.split names no stage": (
        BASE, ['model.split="layer9"'],
        "model.split: the encoder has no stage 'layer9'; stages are stem, layer1, layer2, layer3, layer4 (or 'none')",
    ),
    "batch larger than the dataset": (
        BASE, ["train.batch_size=16"],
        "train.batch_size: 16 is more than dataset 'moving_squares' holds (8 videos); lower train.batch_size or add videos",
    ),
    "lr nan": (BASE, ["optim.lr=nan"], "optim.lr: nan is not a finite number; give a finite value"),
    "lr inf": (BASE, ["optim.lr=inf"], "optim.lr: inf is not a finite number; give a finite value"),
    "clip_grad nan": (BASE, ["train.clip_grad=nan"], "train.clip_grad: nan is not a finite number; give a finite value"),
    "unknown key suggests the closest": (BASE, ["optim.lrate=0.1"], "optim.lrate: unknown key; did you mean 'lr'?"),
    # --- found while fixing it ------------------------------------------------------------------
    "nan written in the file": (BASE.replace("temperature = 0.1", "temperature = nan"), [], "tasks.contrastive.temperature: nan is not a finite number; give a finite value"),
    "nan in a table of weights": (BASE, ["combiner.weights.probe=nan"], "combiner.weights.probe: nan is not a finite number; give a finite value"),
    "nan in an [[eval]] table": (BASE, ["eval.0.tol=nan"], "eval[0].tol: nan is not a finite number; give a finite value"),
    "AdamW betas outside [0, 1)": (
        BASE, ["optim.betas=[1.5, 0.999]"],
        "optim.betas: each must be in [0, 1) (AdamW's running averages, e.g. [0.9, 0.999]), got [1.5, 0.999]",
    ),
    "step schedule with decreasing milestones": (
        BASE, ['schedule.name="step"', "schedule.milestones=[5, 1]"], "schedule.milestones: expected increasing numbers > 0, got [5, 1]",
    ),
    "online probe with 0 classes": (
        BASE, ["tasks.probe.num_classes=0"], "tasks.probe.num_classes: expected an integer >= 1 (the dataset's number of classes), got 0",
    ),
    "online probe with fewer classes than the data": (
        BASE, ["tasks.probe.num_classes=2"],
        "tasks.probe.num_classes: 2, but dataset 'moving_squares' has 4 classes; set num_classes = 4",
    ),
    "negative per-task learning-rate scale": (
        BASE, ["optim.lr_scale.contrastive=-1.0"],
        "optim.lr_scale.contrastive: must be >= 0 (a multiplier of optim.lr; 0 freezes the task's branch and head), got -1.0",
    ),
    "projection hidden_dim 0": (BASE, ["tasks.contrastive.hidden_dim=0"], "tasks.contrastive.hidden_dim: must be an integer >= 1, got 0"),
    "simclr with a batch of one video": (
        BASE, ["train.batch_size=1"],
        "train.batch_size: 1 is fewer videos than task 'contrastive' (simclr) needs in a batch (2); raise train.batch_size",
    ),
    "simclr pooling where the person is without part maps": (
        BASE, ['tasks.contrastive.pool="foreground"'],
        'tasks.contrastive: simclr: pool = "foreground" weights the features by the part maps of both views, but the batch '
        "has none; add a distillation task whose teacher is stored (parsing_distill with a cached or ground-truth "
        'teacher), or set pool = "mean"',
    ),
    "[[eval]] dataset root that does not exist": (
        BASE, ['eval.0.test_data={name = "video_folder", root = "{tmp}/nowhere"}'],
        "eval[0].test_data.root: {tmp}/nowhere: video folder root not found (expected a folder)",
    ),
    "[[eval]] UCF101 split 4": (
        BASE, ['eval.0.test_data={name = "ucf101", root = "{tmp}/ucf", split = 4}'], "eval[0].test_data.split: expected 1, 2 or 3, got 4",
    ),
    "--set index past the [[eval]] tables": (
        BASE, ["eval.3.max_iter=5"], "--set eval.3.max_iter=5: eval has 1 entry, so there is no eval[3] (indices count from 0)",
    ),
    "not UTF-8": (b"\xff\xfe[data]\n", [], "not UTF-8 text (byte 0xff at line 1); save the recipe as UTF-8"),
    "a folder as the recipe": (FOLDER, [], "is a folder; give the recipe's .toml file"),
    "over 1 MiB": (BASE + "#" * (1 << 20), [], "larger than 1024 KiB, too large to be a recipe; give the recipe's .toml file"),
    "TOML syntax": ("[data\nname = 1\n", [], "not valid TOML: Expected ']' at the end of a table declaration (at line 1, column 6)"),
}
if not torch.cuda.is_available():
    CASES["train.device cuda without a GPU"] = (
        BASE, ['train.device="cuda"'], 'train.device: "cuda" but no CUDA device is available here; use "auto" or "cpu"',
    )

MODES = {
    "run": ["run"],
    "dry-run": ["run", "--dry-run"],
    "info": ["info"],
}


@pytest.fixture
def cli_in(tmp_path, monkeypatch):
    """``cli_in(args)``: ``hcframe --plugin hcframe_testkit ARGS`` in process, from an empty working
    folder, with the synthetic-world cache in an empty folder too."""
    from hcframe.cli import cli

    for var in (ENV_DISABLE_AUTOLOAD, ENV_PLUGINS, ENV_STRICT, "HCFRAME_DEBUG"):
        monkeypatch.setenv(var, "")  # restored after the test, also what --plugin writes
        monkeypatch.delenv(var)
    monkeypatch.setenv("HCFRAME_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cwd").mkdir()
    (tmp_path / "ucf").mkdir()  # an existing, empty UCF101 root
    monkeypatch.chdir(tmp_path / "cwd")

    def invoke(args: list[str]):
        reset_registry()
        return CliRunner().invoke(cli, ["--plugin", "hcframe_testkit", *args])

    yield invoke
    reset_registry()


@pytest.fixture
def kit(monkeypatch):
    """The test kit registered (as ``--plugin hcframe_testkit``) for one test."""
    for var in (ENV_DISABLE_AUTOLOAD, ENV_STRICT):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(ENV_PLUGINS, "hcframe_testkit")
    reset_registry()
    yield
    reset_registry()


def _write(tmp_path: Path, content: str | bytes | object) -> Path:
    recipe = tmp_path / "bad.toml"
    if content is FOLDER:
        recipe.mkdir()
    elif isinstance(content, bytes):
        recipe.write_bytes(content)
    else:
        recipe.write_text(content.replace("{tmp}", str(tmp_path)))
    return recipe


def _nothing_written(tmp_path: Path) -> None:
    assert list((tmp_path / "cwd").iterdir()) == []  # no runs/<name>, nothing else
    cache = tmp_path / "cache"
    assert not cache.exists() or list(cache.rglob("*")) == []  # no synthetic world generated


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("case", list(CASES))
def test_bad_recipe_is_refused_before_any_work(case, mode, cli_in, tmp_path):
    content, overrides, expected = CASES[case]
    recipe = _write(tmp_path, content)
    result = cli_in([*MODES[mode], str(recipe), *(a for o in overrides for a in ("--set", o.replace("{tmp}", str(tmp_path))))])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(f"error: {recipe}: {expected.replace('{tmp}', str(tmp_path))}"), lines[0]
    assert result.stdout == ""
    _nothing_written(tmp_path)


@pytest.mark.parametrize("text", [BASE, SYNTHETIC.replace("num_classes = 4", "num_classes = 12")], ids=["test kit", "synthetic world"])
def test_a_good_recipe_passes_the_same_checks_without_work(text, cli_in, tmp_path):
    # --dry-run and info check the synthetic world's arguments without generating it.
    recipe = _write(tmp_path, text)
    result = cli_in(["run", str(recipe), "--dry-run"])
    assert result.exit_code == 0 and result.stdout.startswith(f"{recipe}: ok (2 tasks, split layer3"), result.output
    assert cli_in(["info", str(recipe), "--json"]).exit_code == 0
    _nothing_written(tmp_path)


def test_set_reaches_eval_tables_by_index(kit, tmp_path):
    from hcframe.recipe import RecipeError, load_recipe

    recipe = _write(tmp_path, BASE)
    assert load_recipe(recipe).eval_specs[0].options.max_iter != 5
    assert load_recipe(recipe, ["eval.0.max_iter=5"]).eval_specs[0].options.max_iter == 5
    assert load_recipe(recipe, ["eval[0].max_iter=7"]).evaluations[0]["max_iter"] == 7
    assert load_recipe(recipe, ["model.encoder.blocks.1=2"]).encoder.args["blocks"] == [1, 2, 1, 1]
    with pytest.raises(RecipeError, match=r"eval is an array; index it with a number, e.g. eval.0.max_iter"):
        load_recipe(recipe, ["eval.max_iter=5"])
    with pytest.raises(RecipeError, match=r"the recipe has no hooks array to index"):
        load_recipe(recipe, ["hooks.0.name=x"])


def test_closest_key_ranks_edits_before_similarity():
    from hcframe.tables import closest

    optim = ["name", "lr", "momentum", "nesterov", "betas", "weight_decay", "lr_scale"]
    assert closest("lrate", optim) == "lr"  # difflib's ratio alone prefers lr_scale
    assert closest("lr_sclae", optim) == "lr_scale"  # a swap of neighbours is one edit
    assert closest("weight", optim) == "weight_decay"
    assert closest("xyz", optim) is None


def test_recipe_files_must_be_small_regular_utf8(tmp_path):
    from hcframe.recipe import MAX_RECIPE_BYTES, RecipeError, read_recipe_file

    with pytest.raises(RecipeError, match="is a folder; give the recipe's .toml file"):
        read_recipe_file(tmp_path)
    big = tmp_path / "big.toml"
    big.write_text(BASE + "#" * MAX_RECIPE_BYTES)
    with pytest.raises(RecipeError, match="larger than 1024 KiB, too large to be a recipe"):
        read_recipe_file(big)
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + BASE.encode())  # some editors start UTF-8 files with a byte-order mark
    assert read_recipe_file(bom)["train"]["steps"] == 1


def test_trainer_takes_what_build_run_built(kit, tmp_path):
    from hcframe.config import BuiltRun, build_run
    from hcframe.engine.trainer import Trainer

    toy = BASE.replace("steps = 1", "steps = 2").replace('name = "r2plus1d_18"\nwidth = 4\nblocks = [1, 1, 1, 1]', 'name = "tiny3d_test"')
    recipe = _write(tmp_path, toy.replace('split = "layer3"', 'split = "layer2"'))
    built = build_run(recipe, ["train.checkpoint_every=2"])
    assert isinstance(built, BuiltRun) and len(built.dataset) == 8 and built.dataset.num_views == 2
    assert set(built.eval_datasets) == {(0, None, "train"), (0, None, "test")}
    before = {k: v.clone() for k, v in built.model.state_dict().items()}
    summary = Trainer(built, tmp_path / "run", log=lambda m: None).train()
    assert summary["steps"] == 2
    # The trainer trained the built model itself, from the initialisation build_run seeded.
    assert any(not torch.equal(before[k], v) for k, v in built.model.state_dict().items())
    torch.manual_seed(12345)
    again = build_run(recipe).model.state_dict()
    assert all(torch.equal(before[k], again[k]) for k in before)


# --- as a user runs it: files that could hang or exhaust memory, plugin commands -------------------
def _hcframe(args: list[str], cwd: Path, **env: str):
    import subprocess
    import sys

    child = {k: v for k, v in os.environ.items() if not k.startswith("HCFRAME_")}
    child.update(PYTHONPATH=str(SUPPORT), OMP_NUM_THREADS="1", **env)
    script = Path(sys.executable).with_name("hcframe")
    return subprocess.run([str(script), *args], cwd=cwd, env=child, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "not UTF-8", "constructor error"])
def test_refusals_in_a_real_process_are_one_line(kind, tmp_path):
    (tmp_path / "cwd").mkdir()
    if kind == "fifo":
        recipe, expected = tmp_path / "fifo.toml", "not a regular file (a pipe, device or socket); give the recipe's .toml file"
        os.mkfifo(recipe)  # nothing ever writes to it: reading it would wait forever
    elif kind == "/dev/zero":
        recipe, expected = Path("/dev/zero"), "not a regular file (a pipe, device or socket); give the recipe's .toml file"
    elif kind == "not UTF-8":
        recipe, expected = tmp_path / "latin1.toml", "not UTF-8 text (byte 0xe9 at line 7); save the recipe as UTF-8"
        recipe.write_bytes(BASE.replace("[transform]", "# r\xe9sum\xe9\n[transform]", 1).encode("latin-1"))
    else:
        recipe, expected = tmp_path / "width.toml", "model.encoder.width: must be an integer >= 1, got 0"
        recipe.write_text(BASE.replace("width = 4", "width = 0"))
    # One command each (the in-process table runs every case through all three).
    args = {"/dev/zero": ["info", str(recipe)], "not UTF-8": ["run", str(recipe), "--dry-run"]}.get(kind, ["run", str(recipe)])
    result = _hcframe(["--plugin", "hcframe_testkit", *args], tmp_path / "cwd", HCFRAME_CACHE=str(tmp_path / "cache"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"error: {recipe}: {expected}"]
    assert result.stdout == ""
    _nothing_written(tmp_path)


def test_plugin_commands_refuse_a_bad_recipe_with_exit_2(tmp_path):
    (tmp_path / "cwd").mkdir()
    videos = tmp_path / "videos.toml"  # check-videos reads the [data] dataset alone
    videos.write_text(SYNTHETIC.replace('name = "synthetic_humans"', 'name = "synthetic_humans"\nclips = { clip_len = 0 }', 1))
    teacher = tmp_path / "teacher.toml"  # cache-teacher builds every component, the teacher once
    missing = tmp_path / "schp_lip.pth"
    teacher.write_text(BASE.replace(
        "[tasks.probe]", f'[tasks.parsing]\nname = "parsing_distill"\ncache = "{tmp_path / "targets"}"\n'
        f'teacher = {{ name = "schp", checkpoint = "{missing}" }}\n\n[tasks.probe]',
    ))
    for args, expected in (
        (["check-videos", str(videos)], f"error: {videos}: data.clips.clip_len: expected an integer >= 1, got 0"),
        (["cache-teacher", str(teacher)], f"error: {teacher}: tasks.parsing.teacher.checkpoint: SCHP checkpoint '{missing}' does not exist"),
    ):
        result = _hcframe(["--plugin", "hcframe_testkit", *args], tmp_path / "cwd", HCFRAME_CACHE=str(tmp_path / "cache"))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert not (tmp_path / "targets").exists()
    _nothing_written(tmp_path)
