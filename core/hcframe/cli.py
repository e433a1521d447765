"""The ``hcframe`` command.

Exit codes: 0 success, 1 a run that failed, 2 a bad recipe or bad usage (nothing was started).
Plugins add commands through the ``hcframe_add_commands`` hook.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hcframe import __version__
from hcframe.recipe import RecipeError, load_recipe
from hcframe.registry import ENV_PLUGINS, ENV_STRICT, KINDS, PluginError, get_registry

__all__ = ["Refused", "cli", "fail", "main"]

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)


def fail(message: str, code: int) -> "click.exceptions.Exit":
    """Print ``error: message`` on one line to stderr and exit with ``code``."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    raise click.exceptions.Exit(code)


class Refused(click.ClickException):
    """Bad input refused before any work: ``error: <message>`` on one line, exit code 2. Commands
    (plugins' too) raise it for a recipe that cannot run: ``raise Refused(str(recipe_error))``."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        err_console.print(f"[bold red]error:[/] {escape(self.format_message())}", markup=True, soft_wrap=True)


def _one_line_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    """Warnings as ``warning: <text>``, one line (Python's default adds the source line)."""
    err_console.print(f"[yellow]warning:[/] {escape(' '.join(str(message).split()))}", soft_wrap=True)


def _registry_or_fail():
    try:
        return get_registry()
    except PluginError as exc:
        fail(str(exc), 2)


class HcframeGroup(click.Group):
    """The root group: plugin commands are added on first use, after ``--plugin`` is parsed."""

    _plugins_loaded = False

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        registry = _registry_or_fail()
        for failure in registry.failures:
            err_console.print(
                f"[yellow]warning:[/] {escape(f'plugin {failure.plugin} from {failure.provider} failed to load and was skipped: {failure.error}')}",
                soft_wrap=True,
            )

        def on_error(provider: str, exc: BaseException) -> None:
            err_console.print(f"[yellow]warning:[/] {escape(f'commands of {provider} were skipped: {type(exc).__name__}: {exc}')}", soft_wrap=True)

        registry.add_commands(self, on_error)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugins()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load_plugins()
        return super().get_command(ctx, cmd_name)


def _add_explicit_plugins(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> None:
    # Only recorded here: the registry is built once every option (e.g. --strict-plugins, in any
    # order) is known. The environment variable also reaches DataLoader workers and torchrun ranks.
    specs = [s for s in os.environ.get(ENV_PLUGINS, "").split(",") if s]
    os.environ[ENV_PLUGINS] = ",".join([*specs, *(v for v in values if v not in specs)])


def _strict(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        os.environ[ENV_STRICT] = "1"


@click.group(cls=HcframeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hcframe")
@click.option("--strict-plugins", is_flag=True, is_eager=True, expose_value=False, callback=_strict,
              help="Fail when an installed plugin cannot be loaded (default: report and skip it).")
@click.option("--plugin", "plugins", multiple=True, is_eager=True, expose_value=False, callback=_add_explicit_plugins,
              metavar="MODULE[:OBJECT]", help="Register a plugin that is not installed (research code). Repeatable.")
def cli() -> None:
    """Human-centred multi-task self-supervised pre-training of video encoders."""


# --- plugins ---------------------------------------------------------------------------------------
@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (kind, name, provider, version, summary).")
@click.option("--kind", default=None, type=click.Choice(KINDS), help="Only components of this kind.")
def plugins_command(as_json: bool, kind: str | None) -> None:
    """List registered components and the distributions that provide them."""
    registry = _registry_or_fail()
    records = registry.list(kind)
    if as_json:
        click.echo(json.dumps([r.as_json() for r in records], indent=2))
        return
    table = Table(title="hcframe components")
    for column in ("kind", "name", "provider", "version", "summary"):
        table.add_column(column, overflow="fold")
    for r in records:
        table.add_row(r.kind, r.name, r.provider, r.version, r.summary)
    out_console.print(table)


# --- run -------------------------------------------------------------------------------------------
def _load(recipe_path: str, overrides: tuple[str, ...]):
    _registry_or_fail()
    try:
        return load_recipe(recipe_path, overrides)
    except RecipeError as exc:
        fail(str(exc), 2)


def _build(recipe, *, train_data: bool = True, check_only: bool = False, log=None):
    """Everything the recipe names, constructed and checked (:func:`hcframe.config.build_run`):
    a recipe that cannot run exits 2 with one line, before any work."""
    from hcframe.config import build_run

    try:
        return build_run(recipe, train_data=train_data, check_only=check_only, log=log)
    except RecipeError as exc:
        if os.environ.get("HCFRAME_DEBUG") and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__)
        fail(str(exc), 2)


def _log_to_stderr(message: str) -> None:
    err_console.print(escape(message), soft_wrap=True)


def _default_run_dir(recipe_path: str, resume: bool) -> Path:
    """``runs/<recipe stem>``; a new run never reuses a directory (``-2``, ``-3`` …), a resume takes
    the newest existing one."""
    stem = Path(recipe_path).stem
    base = Path("runs") / stem
    existing = [base] if base.exists() else []
    i = 2
    while (Path("runs") / f"{stem}-{i}").exists():
        existing.append(Path("runs") / f"{stem}-{i}")
        i += 1
    if resume:
        return existing[-1] if existing else base
    return Path("runs") / f"{stem}-{i}" if existing else base


@cli.command("run")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path())  # checked by read_recipe_file: one line
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe key (TOML value). Repeatable.")
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None, help="Run directory (default: runs/<recipe name>).")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in the run directory (with the run's --set options).")
@click.option("--dry-run", is_flag=True, help="Validate the recipe and build the model, then stop.")
def run_command(recipe_path: str, overrides: tuple[str, ...], output: str | None, resume: bool, dry_run: bool) -> None:
    """Run a recipe: pre-training, then its evaluation stages."""
    from hcframe.rundir import RunDirBusy, RunDirError, merge_overrides, read_overrides

    run_dir = Path(output) if output else _default_run_dir(recipe_path, resume)
    if resume:  # the run's own --set options first; options given now are applied after them
        try:
            stored = read_overrides(run_dir)
        except RunDirError as exc:
            fail(str(exc), 2)
        if stored and os.environ.get("RANK", "0") == "0":
            err_console.print(escape(f"resuming with the run's options: {' '.join(f'--set {o}' for o in stored)}"), soft_wrap=True)
        overrides = tuple(merge_overrides(stored, overrides))
    recipe = _load(recipe_path, overrides)
    # --dry-run checks the data without the work of building it (a synthetic world is not generated)
    built = _build(recipe, check_only=dry_run, log=None if dry_run else _log_to_stderr)
    from hcframe.engine.trainer import RunFailed
    from hcframe.files import FileWriteError

    if dry_run:
        n = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
        click.echo(f"{recipe.source}: ok ({len(recipe.tasks)} tasks, split {recipe.model.split}, {n:,} trainable parameters)")
        return
    from hcframe.run import run_recipe

    if not resume and (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        fail(f"{run_dir} already holds checkpoints; pass --resume to continue it or --output for a new run", 2)
    if os.environ.get("RANK", "0") == "0":
        err_console.print(f"run directory: {run_dir}")
    try:
        summary = run_recipe(built, run_dir, resume=resume, progress=err_console.is_terminal, overrides=overrides)
    except RunDirBusy as exc:  # refused before anything was written
        fail(str(exc), 2)
    except (RunFailed, RunDirError, FileWriteError) as exc:
        fail(str(exc), 1)
    except KeyboardInterrupt:
        # The run directory keeps the --set options; plugins named by --plugin must be named again.
        plugins = "".join(f"--plugin {shlex.quote(spec)} " for spec in os.environ.get(ENV_PLUGINS, "").split(",") if spec)
        fail(f"interrupted; continue with: hcframe {plugins}run {shlex.quote(recipe_path)} --output {shlex.quote(str(run_dir))} --resume", 130)
    except Exception as exc:  # a failed run: one line, the traceback only on request
        if os.environ.get("HCFRAME_DEBUG"):
            traceback.print_exc()
        fail(f"run failed: {type(exc).__name__}: {exc} (set HCFRAME_DEBUG=1 for the traceback)", 1)
    if os.environ.get("RANK", "0") == "0":
        _print_summary(summary)


def _print_summary(summary: dict[str, Any]) -> None:
    from hcframe.metrics import read_metric_schema

    final = summary.get("final_metrics", {})
    try:  # the keys the run declared for the progress line
        progress = {k for k, info in read_metric_schema(summary["run_dir"]).items() if info.progress}
    except ValueError:
        progress = set()
    shown = {k: v for k, v in final.items() if isinstance(v, float) and (k == "loss" or k in progress)}
    err_console.print(
        f"[bold green]{summary['status']}[/] {summary.get('steps', 0)} steps in {summary['wall_time_s']:.1f} s; "
        + " ".join(f"{k}={v:.4g}" for k, v in shown.items()),
        soft_wrap=True,
    )
    bad = summary.get("bad_videos", {}).get("count", 0)
    if bad:
        err_console.print(f"[yellow]{bad} unreadable videos skipped[/] (listed in summary.json)")
    if summary.get("eval"):
        from hcframe.evaluation import eval_table

        out_console.print(eval_table(summary["eval"]))


# --- info ------------------------------------------------------------------------------------------
@cli.command("info")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path())  # checked by read_recipe_file: one line
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE")
@click.option("--frames", type=int, default=None, help="Clip length (default: what the dataset declares).")
@click.option("--size", type=int, default=None, help="Clip side in pixels (default: what the dataset declares, through the transform).")
@click.option("--json", "as_json", is_flag=True)
def info_command(recipe_path: str, overrides: tuple[str, ...], frames: int | None, size: int | None, as_json: bool) -> None:
    """Parameter count and FLOPs per clip and per step (all views), counted with fvcore."""
    recipe = _load(recipe_path, overrides)
    built = _build(recipe, check_only=True)
    from hcframe.info import model_info, training_clip_shape

    declared = training_clip_shape(recipe) if frames is None or size is None else None
    if (frames is None or size is None) and declared is None:
        fail(f"{recipe.source}: dataset {recipe.data.name!r} does not declare its clip shape; pass --frames and --size", 2)
    frames = frames or declared.frames
    height, width = (size, size) if size else (declared.height, declared.width)
    info = model_info(built.model, frames, height, width)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    table = Table(title=f"{recipe.source}: {recipe.encoder.name}, split {recipe.model.split}, clip 3x{frames}x{height}x{width}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("encoder parameters", f"{info['encoder_parameters']:,}")
    table.add_row("trainable parameters (trunk, branches, heads)", f"{info['trainable_parameters']:,}")
    table.add_row("GFLOPs per clip (encoder forward)", f"{info['gflops_per_clip']:.3f}")
    table.add_row(f"GFLOPs per sample, all {info['views_per_step']} views through trunk and branches", f"{info['gflops_per_step_sample']:.3f}")
    out_console.print(table)
    if info["uncounted_operators"]:
        out_console.print("operators fvcore could not count: " + ", ".join(f"{k} ({v}x)" for k, v in info["uncounted_operators"].items()))
    else:
        out_console.print("operators fvcore could not count: none")


# --- eval ------------------------------------------------------------------------------------------
@cli.command("eval")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path())  # checked by read_recipe_file: one line
@click.option("--checkpoint", "checkpoint", required=True, type=click.Path(dir_okay=False),
              help="A training checkpoint (checkpoints/step_N.pt), an encoder export, or a state dict in a layout the encoder reads (torchvision).")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a recipe key (TOML value). Repeatable.")
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None, help="Where eval.json and the feature cache go (default: the checkpoint's run directory).")
def eval_command(recipe_path: str, checkpoint: str, overrides: tuple[str, ...], output: str | None) -> None:
    """Run only the recipe's [[eval]] stages on a checkpoint's model weights (or on an encoder
    alone, copied into the trunk and every branch)."""
    from rich.markup import escape

    from hcframe.engine.pretrained import PretrainedError

    # The checkpoint replaces the encoder's weights: the recipe's model.init is not read.
    recipe = _load(recipe_path, ('model.init=""', 'model.init_branch=""', *overrides))
    if not recipe.evaluations:
        fail(f"{recipe.source}: the recipe has no [[eval]] tables; add one (protocol = \"linear_probe\", ...)", 2)
    checkpoint_path = Path(checkpoint)
    if not checkpoint_path.is_file():
        fail(f"{checkpoint_path}: checkpoint file not found", 2)
    built = _build(recipe, train_data=False, log=_log_to_stderr)  # the model and the [[eval]] data
    from hcframe.evaluation import default_eval_dir, eval_table, evaluate_checkpoint

    out_dir = Path(output) if output else default_eval_dir(checkpoint_path)
    try:
        report = evaluate_checkpoint(built, checkpoint_path, out_dir, progress=err_console.is_terminal)
    except PretrainedError as exc:  # the weights do not fit the recipe: refused before any evaluation
        fail(str(exc), 2)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as exc:  # one line; the traceback only on request
        if os.environ.get("HCFRAME_DEBUG"):
            traceback.print_exc()
        fail(f"eval failed: {type(exc).__name__}: {exc} (set HCFRAME_DEBUG=1 for the traceback)", 1)
    if os.environ.get("RANK", "0") == "0":  # under torchrun the main process reports
        out_console.print(eval_table(report["eval"]))
        err_console.print(escape(f"results written to {out_dir / 'eval.json'} ({report['wall_time_s']:.1f} s)"))


# --- export-encoder --------------------------------------------------------------------------------
@cli.command("export-encoder")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--branch", default="", help="The task whose branch follows the trunk (required when the checkpoint has several).")
@click.option("--format", "layout", default="hcframe", show_default=True,
              help="hcframe (an encoder export: [model] init and eval read it), or a layout the encoder writes, e.g. torchvision (no classifier).")
@click.option("--recipe", "recipe_path", default=None, type=click.Path(dir_okay=False),
              help="The recipe the checkpoint was trained with (default: recipe.toml of its run directory).")
def export_encoder_command(checkpoint: str, out: str, branch: str, layout: str, recipe_path: str | None) -> None:
    """Write the encoder of CHECKPOINT (the trunk and one task's branch) to OUT."""
    from hcframe.engine.pretrained import PretrainedError, export_encoder
    from hcframe.evaluation import default_eval_dir

    recipe_file = Path(recipe_path) if recipe_path else default_eval_dir(Path(checkpoint)) / "recipe.toml"
    if not recipe_file.is_file():
        fail(f"{recipe_file}: no recipe; pass --recipe with the recipe the checkpoint was trained with", 2)
    # Only the encoder's description is needed: the recipe's own model.init is not read.
    recipe = _load(str(recipe_file), ('model.init=""', 'model.init_branch=""'))
    try:
        weights = export_encoder(checkpoint, out, recipe, branch=branch, layout_name=layout)
    except PretrainedError as exc:
        fail(str(exc), 2)
    err_console.print(escape(f"wrote {out} ({layout} format, encoder {recipe.encoder.name}): {weights.describe()}"), soft_wrap=True)


# --- report ----------------------------------------------------------------------------------------
@cli.command("report")
@click.argument("run_dir", metavar="RUN_DIR")
@click.option("--out", "out_dir", default=None, metavar="DIR", help="Where the figures and eval.md go (default: RUN_DIR/report).")
@click.option("--smooth", "smoothing", default=0.6, show_default=True, type=float,
              help="Smoothing of the curves (TensorBoard's, in [0, 1); 0: raw curves only).")
def report_command(run_dir: str, out_dir: str | None, smoothing: float) -> None:
    """Figures (PNG and SVG, drawn with matplotlib: pip install 'hcframe[report]') of a run's
    losses, learning rate, accuracies, parsing quality, gradient cosines, loss weights and
    throughput over steps, and its evaluation results as Markdown (eval.md)."""

    from hcframe.report import ReportError, write_report

    try:
        paths = write_report(run_dir, out_dir, smoothing=smoothing)
    except ReportError as exc:
        fail(str(exc), 2)
    for path in paths:
        click.echo(str(path))


# --- ablation --------------------------------------------------------------------------------------
@cli.command("ablation")
@click.argument("recipe_paths", nargs=-1, required=True, metavar="RECIPE...")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated training seeds (train.seed); every recipe runs once per seed.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Folder of the runs (<recipe stem>/seed<N>) and of ablation.{md,json,png}.")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE", help="Override a key in every recipe (TOML value). Repeatable.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME|GLOB",
              help="Compare only these results: a full name (linear_probe/<dataset>/concat/top1), a glob, or a bare metric (top1). Repeatable; default: every float eval metric.")
@click.option("--collect", "collect_only", is_flag=True,
              help="Run nothing: aggregate the runs under --output that completed (e.g. started one by one or on other machines); the rest are listed as not run.")
def ablation_command(recipe_paths: tuple[str, ...], seeds: str, output: str, overrides: tuple[str, ...], metrics: tuple[str, ...],
                     collect_only: bool) -> None:
    """Run each RECIPE for every seed (sequentially, resumable: finished runs are skipped) and
    print mean ± std (sample std, n - 1) per recipe and metric; writes ablation.md, .json, and
    the bar chart as .png and .svg (matplotlib: pip install 'hcframe[report]')."""

    from hcframe.ablation import AblationError, ablation_table, parse_seeds, run_ablation, write_ablation_outputs
    from hcframe.figures import MatplotlibMissing, require_matplotlib

    try:  # the chart is drawn at the end: refuse before the runs, not after them
        require_matplotlib("hcframe ablation")
    except MatplotlibMissing as exc:
        fail(str(exc), 2)
    _registry_or_fail()
    output_dir = Path(output)
    try:
        result = run_ablation(recipe_paths, parse_seeds(seeds), output_dir, overrides=overrides, metrics=metrics,
                              collect_only=collect_only, log=lambda m: err_console.print(m, markup=False, highlight=False, soft_wrap=True))
    except (AblationError, RecipeError) as exc:
        fail(str(exc), 2)
    except KeyboardInterrupt:
        fail("interrupted; run the same command again to continue (finished runs are skipped)", 130)
    out_console.print(ablation_table(result))
    for path in write_ablation_outputs(result, output_dir, log=lambda m: err_console.print(m, markup=False)):
        err_console.print(f"wrote {path}", markup=False)
    if result.failed:
        fail(f"{len(result.failed)} of {len(result.runs)} runs failed: " + "; ".join(f"{r.name} seed {r.seed}: {r.error}" for r in result.failed), 1)


def main() -> None:
    from hcframe.files import FileWriteError

    warnings.showwarning = _one_line_warning
    try:
        cli.main(prog_name="hcframe", standalone_mode=True)
    except PluginError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(2)
    except FileWriteError as exc:  # any command: the file and the cause (disk full, ...), one line
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(1)
