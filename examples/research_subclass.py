"""Research code without a package: subclass a registered task, register it, run a recipe.

``SmoothedMLPClassification`` is the core's ``supervised`` task with a two-layer MLP head and label
smoothing on by default. Nothing is installed; there are two ways to use it:

From the command line (the module must be importable, hence ``PYTHONPATH``)::

    PYTHONPATH=examples hcframe --plugin research_subclass:plugin run recipe.toml --output runs/x

where the recipe has ``[tasks.sup] name = "supervised_mlp"``. ``--plugin`` also exports the plugin to
child processes (DataLoader workers, torchrun ranks) through ``HCFRAME_PLUGINS``.

From Python, as this script does::

    python examples/research_subclass.py recipe.toml --output runs/x [--plugin other_module:plugin]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch import nn

import hcframe
from hcframe.heads import SupervisedClassification
from hcframe.recipe import RecipeError, load_recipe
from hcframe.registry import Registry
from hcframe.run import run_recipe


class SmoothedMLPClassification(SupervisedClassification):
    """Supervised classification with a Linear-ReLU-Linear head and label smoothing (default 0.1).

    Arguments: ``num_classes`` (int, required); ``hidden`` (int >= 1, default 64): width of the
    MLP's hidden layer; ``label_smoothing`` (float in [0, 1), default 0.1); ``dropout`` (float in
    [0, 1), default 0): before the first layer. Everything else (loss, accuracy metric, the
    ``label`` batch key) is inherited from the core's ``supervised`` task.
    """

    def __init__(self, num_classes: int, hidden: int = 64, label_smoothing: float = 0.1, dropout: float = 0.0) -> None:
        if hidden < 1:
            raise ValueError(f"supervised_mlp: hidden must be >= 1, got {hidden}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"supervised_mlp: label_smoothing must be in [0, 1), got {label_smoothing}")
        super().__init__(num_classes=num_classes, dropout=dropout, label_smoothing=label_smoothing)
        self.hidden = hidden

    def setup(self, encoder: nn.Module, feature_dim: int) -> None:
        # Only the head changes; the parent's forward() calls self.head(pooled features).
        self.head = nn.Sequential(
            nn.Dropout(self.dropout),
            nn.Linear(feature_dim, self.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(self.hidden, self.num_classes),
        )


class ResearchPlugin:
    """The hook implementations of this script, as an object ``--plugin`` can name."""

    @hcframe.hookimpl
    def hcframe_register(self, registry: Registry) -> None:
        registry.add("task", "supervised_mlp", SmoothedMLPClassification)


#: What ``--plugin research_subclass:plugin`` registers.
plugin = ResearchPlugin()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a recipe with the supervised_mlp task registered.")
    parser.add_argument("recipe", help="recipe TOML file")
    parser.add_argument("--output", "-o", required=True, help="run directory")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MODULE[:OBJECT]",
                        help="further plugins to register (e.g. hcframe_testkit)")
    args = parser.parse_args(argv)
    hcframe.register_plugin(plugin, name="research_subclass")
    for spec in args.plugins:
        hcframe.register_plugin(spec)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = run_recipe(recipe, Path(args.output))
    print(f"{summary['status']}: {summary.get('steps', 0)} steps, loss {summary.get('final_metrics', {}).get('loss')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
