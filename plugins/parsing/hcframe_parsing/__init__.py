"""hcframe human-parsing distiller: teachers (SCHP-compatible, TorchScript, synthetic ground truth),
the teacher cache, and the ``parsing_distill`` pretext task."""

__version__ = "0.1.0"
