"""A distributed sampler that yields ``(index, epoch)`` keys and resumes mid-epoch."""

from __future__ import annotations

from typing import Iterator

from torch.utils.data import DistributedSampler

__all__ = ["EpochSampler"]


class EpochSampler(DistributedSampler):
    """:class:`~torch.utils.data.DistributedSampler` whose items are ``(index, epoch)`` keys.

    The epoch travels with every index, so datasets seed each sample from ``(seed, epoch, index)``
    even in persistent workers (see :mod:`hcframe.data`). ``skip`` drops the first ``skip`` items
    of this rank's share of the current epoch: the sampler position of a resumed run.
    """

    def __init__(self, dataset_len: int, num_replicas: int, rank: int, seed: int, shuffle: bool = True) -> None:
        self._len = dataset_len
        super().__init__(range(dataset_len), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())[self.skip :]
        epoch = self.epoch
        self.skip = 0  # only the first epoch after a resume is partial
        return iter([(i, epoch) for i in indices])
