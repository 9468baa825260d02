"""A distributed, resumable sampler: the order of an epoch is a pure function of (seed, epoch).

Every rank takes an equal, disjoint share of one permutation of the dataset (the tail that
does not divide evenly is dropped, as DistributedSampler(drop_last=True)), and a resumed run can
start in the middle of an epoch: `set_epoch(epoch, start=k)` skips the first k samples of this
rank's share, so the rest of the epoch is exactly what the uninterrupted run would have seen.
"""
from typing import Iterator

import torch


class ResumableSampler(torch.utils.data.Sampler):
    def __init__(self, dataset_len: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        if dataset_len < num_replicas:
            raise ValueError(f"{dataset_len} samples cannot be shared by {num_replicas} ranks")
        self.dataset_len, self.num_replicas, self.rank = dataset_len, num_replicas, rank
        self.seed, self.shuffle = seed, shuffle
        self.per_rank = dataset_len // num_replicas
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip this rank's first `start` samples (resume)."""
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.dataset_len, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.dataset_len)
        mine = order[: self.per_rank * self.num_replicas][self.rank::self.num_replicas]
        return iter(mine[self.start:].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation: rank r takes items r, r + W, r + 2W, ... in order. Nothing is padded or dropped,
    so shards may differ by one item and no item is seen twice (no duplicates to remove)."""

    def __init__(self, dataset_len: int, num_replicas: int = 1, rank: int = 0):
        self.items = range(rank, dataset_len, num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)
