"""Training order and augmentation as a function of (seed, epoch, sample) only.

A killed run then resumes exactly: the resumed epoch visits the same samples in the same order,
skipping those already trained on, and each sample is augmented as it would have been, whichever
process or DataLoader worker loads it and however many devices share the epoch.
"""
import random
from contextlib import nullcontext

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, get_worker_info

from vir_lightning.rng_state import cpu_streams_kept


class EpochSampler(DistributedSampler):
    """torch's DistributedSampler (a permutation from ``seed + epoch``, split over the ranks) that yields
    ``(index, augmentation seed)`` pairs and can start ``skip`` samples into its next epoch.

    The seeds depend on (seed, epoch, index), not on the rank or position, so a sample is augmented the
    same on any number of devices. Lightning calls ``set_epoch`` before each epoch.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, drop_last: bool):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
        self.skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        seeds = np.random.default_rng([self.seed, self.epoch]).integers(0, 2 ** 63, len(self.dataset))
        start, self.skip = self.skip, 0  # a resume skips once, in the epoch it resumes
        for index in indices[start:]:
            yield index, int(seeds[index])


class SeededSamples(Dataset):
    """Loads ``dataset[index]`` with torch, numpy and Python's random seeded from the sample's seed
    (the albumentations pipelines and timm's RandAugment draw from these, see ``SeededTransform``).

    In the main process (``num_workers=0``) the global streams are put back afterwards, so the model's
    own randomness (dropout, drop-path, mixup) is not reset by every sample.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        with nullcontext() if get_worker_info() is not None else cpu_streams_kept():
            _seed_all(seed)
            return self.dataset[index]


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)
