"""Registration of the parsing plugin's components and its ``cache-teacher`` command."""

from __future__ import annotations

from typing import Any

from hcframe.registry import Registry, hookimpl

from hcframe_parsing.distill import ParsingDistillation
from hcframe_parsing.ground_truth import GroundTruthTeacher
from hcframe_parsing.schp import SCHPTeacher
from hcframe_parsing.torchscript_teacher import TorchScriptTeacher


@hookimpl
def hcframe_register(registry: Registry) -> None:
    registry.add("teacher", "schp", SCHPTeacher)
    registry.add("teacher", "torchscript", TorchScriptTeacher)
    registry.add("teacher", "synthetic_ground_truth", GroundTruthTeacher)
    registry.add("task", "parsing_distill", ParsingDistillation)


@hookimpl
def hcframe_add_commands(cli: Any) -> None:
    from hcframe_parsing.cli import cache_teacher_command

    cli.add_command(cache_teacher_command)
