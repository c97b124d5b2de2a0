"""The training schedule: linearly scaled learning rate, linear warm-up, step decay,
and a sampler that can resume in the middle of an epoch.

Defaults are MaskTrackRCNN's: lr 0.005 per 32 images, warm-up over 500
iterations from 1/3 of the rate, x0.1 at epochs 8 and 11 of 12.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler


@dataclass(frozen=True)
class Schedule:
    base_lr: float = 0.005
    base_batch: int = 32
    batch_size: int = 1  # images per optimizer step, all processes together
    epochs: int = 12
    lr_steps: tuple[int, ...] = (8, 11)
    gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3.0

    @property
    def lr(self) -> float:
        """The peak rate, scaled linearly with the batch (Goyal et al., 2017)."""
        return self.base_lr * self.batch_size / self.base_batch

    def lr_at(self, iteration: int, epoch: int) -> float:
        """Rate for ``iteration`` (0-based, counted over the whole run) in ``epoch`` (0-based)."""
        decays = sum(1 for step in self.lr_steps if epoch >= step)
        lr = self.lr * self.gamma**decays
        if iteration < self.warmup_iters:
            # mmcv's linear warm-up: from warmup_ratio * lr to lr.
            progress = iteration / self.warmup_iters
            lr *= 1 - (1 - progress) * (1 - self.warmup_ratio)
        return lr


class ResumableSampler(Sampler[int]):
    """Seeded, per-epoch shuffle split across processes, starting at any step.

    The order of an epoch depends only on (seed, epoch), so a run resumed
    mid-epoch, or one on a different number of data-loader workers, sees the
    same samples in the same order as an uninterrupted one.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip its first ``start`` samples of this process."""
        self.epoch = epoch
        self.start = start

    def _indices(self) -> Sequence[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        per_rank = self.per_rank
        # Pad by wrapping so every process takes the same number of steps.
        order = (order * (1 + self.world_size))[: per_rank * self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    @property
    def per_rank(self) -> int:
        """Samples each process sees in a whole epoch."""
        return -(-self.size // self.world_size)

    def __len__(self) -> int:
        return max(self.per_rank - self.start, 0)
