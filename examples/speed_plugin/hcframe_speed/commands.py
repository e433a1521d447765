"""``hcframe c3d-stages``: the example of a plugin adding a command (``hcframe_add_commands``).

Prints each stage of a ``c3d_small`` encoder with its output shape and parameter count for a given
clip size, which is what one needs to pick ``model.split`` (the first stage each task copies) and to
check that ``playback_speed``'s resampled clips are long enough to keep a temporal dimension.
"""

from __future__ import annotations

import json

import click
import torch

from hcframe_speed.c3d import C3DSmall

__all__ = ["c3d_stages_command", "stage_table"]


def stage_table(encoder: C3DSmall, frames: int, size: int) -> list[dict[str, object]]:
    """Per stage: its name, output shape ``[C, T, H, W]`` for one ``3 x frames x size x size`` clip,
    and its parameter count."""
    rows = []
    x = torch.zeros(1, 3, frames, size, size)
    encoder.eval()
    with torch.no_grad():
        for name in encoder.stage_names():
            x = encoder.stages[name](x)
            params = sum(p.numel() for p in encoder.stages[name].parameters())
            rows.append({"stage": name, "output": list(x.shape[1:]), "parameters": params})
    return rows


@click.command("c3d-stages")
@click.option("--width", type=int, default=16, show_default=True, help="c3d_small width.")
@click.option("--num-stages", type=int, default=5, show_default=True, help="c3d_small num_stages.")
@click.option("--batch-norm/--no-batch-norm", default=True, show_default=True)
@click.option("--frames", type=int, default=16, show_default=True, help="Clip length T.")
@click.option("--size", type=int, default=112, show_default=True, help="Clip side in pixels.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
def c3d_stages_command(width: int, num_stages: int, batch_norm: bool, frames: int, size: int, as_json: bool) -> None:
    """Output shape and parameters of each c3d_small stage (to choose model.split)."""
    if frames < 1 or size < 1:
        raise click.BadParameter("must be >= 1", param_hint="--frames/--size")
    try:
        encoder = C3DSmall(width=width, num_stages=num_stages, batch_norm=batch_norm)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    rows = stage_table(encoder, frames, size)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        shape = "x".join(str(d) for d in row["output"])
        click.echo(f"{row['stage']:<6} {shape:>18} {row['parameters']:>12,}")
    click.echo(f"{'total':<6} {'':>18} {sum(r['parameters'] for r in rows):>12,}")
