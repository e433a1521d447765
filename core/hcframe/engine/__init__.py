"""The training engine: model assembly, the loop, checkpoints and torch.distributed helpers."""
