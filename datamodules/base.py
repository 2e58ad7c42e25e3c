"""What every DataModule shares: the global batch split across devices, and the loaders."""
from pathlib import Path
from typing import Callable, Optional, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from vir_lightning.errors import UserError


class VisionDataModule(L.LightningDataModule):
    """Base DataModule.

    Args:
        root: dataset folder.
        batch_size: GLOBAL batch size; each of the N devices loads batch_size / N.
        num_workers: DataLoader worker processes per device.
        image_size: training/evaluation image side in pixels.
        mean, std: normalisation, in [0, 1] pixel units.
    """

    def __init__(
            self,
            root: str,
            batch_size: int = 64,
            num_workers: int = 4,
            image_size: int = 224,
            mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
            std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ):
        super().__init__()
        if batch_size < 1:
            raise UserError(f"--data.batch_size must be at least 1, got {batch_size}")
        if image_size < 1:
            raise UserError(f"--data.image_size must be at least 1, got {image_size}")
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    @property
    def class_names(self) -> Optional[list]:
        return None

    @property
    def device_batch_size(self) -> int:
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world_size:
            raise UserError(
                f"--data.batch_size {self.batch_size} is the global batch and must be divisible by the "
                f"{world_size} devices in use; choose e.g. {max(1, self.batch_size // world_size) * world_size}")
        return self.batch_size // world_size

    # subclasses set train_set and val_set in setup(); test_set and predict_set default to val_set
    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._split('test_set'), train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._split('predict_set'), train=False)

    def _split(self, name: str) -> Dataset:
        dataset = getattr(self, name, None)
        return self.val_set if dataset is None else dataset

    @property
    def eval_batch_size(self) -> int:
        """Per-device batch for validation, test and predict."""
        return self.device_batch_size

    def collate_fn(self) -> Optional[Callable]:
        """How samples become a batch (None: PyTorch's default stacking)."""
        return None

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        batch_size = self.device_batch_size if train else self.eval_batch_size
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train and len(dataset) >= batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn(),
        )
