"""What every DataModule shares: the global batch split across devices, and loaders that resume exactly."""
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from vir_lightning.errors import UserError
from .images import unreadable_images
from .sampling import EpochSampler, SeededSamples

# The loaders resume mid-epoch through the DataModule's state_dict (below), which Lightning does not see.
warnings.filterwarnings('ignore', message="You're resuming from a checkpoint that ended before the epoch ended")


class VisionDataModule(L.LightningDataModule):
    """Base DataModule.

    Args:
        root: dataset folder.
        batch_size: GLOBAL batch size; each of the N devices loads batch_size / N.
        num_workers: DataLoader worker processes per device.
        image_size: training/evaluation image side in pixels.
        mean, std: normalisation, in [0, 1] pixel units.
        verify_images: decode every image of a split before its first batch and report all files that
            fail at once (instead of stopping at the first, hours in); takes a while on large datasets.
    """

    task: str  # 'classification', 'segmentation' or 'detection': the tasks this data is for

    def __init__(
            self,
            root: str,
            batch_size: int = 64,
            num_workers: int = 4,
            image_size: int = 224,
            mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
            std: Sequence[float] = IMAGENET_DEFAULT_STD,
            verify_images: bool = False,
    ):
        super().__init__()
        if batch_size < 1:
            raise UserError(f"--data.batch_size must be at least 1, got {batch_size}")
        if num_workers < 0:
            raise UserError(f"--data.num_workers must be 0 (load in the main process) or more, got {num_workers}")
        if image_size < 1:
            raise UserError(f"--data.image_size must be at least 1, got {image_size}")
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.verify_images = verify_images
        self._verified = set()
        self._resume: Dict[str, Any] = {}

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

    def _verify(self, dataset: Dataset) -> None:
        names = getattr(dataset, 'sample_names', None)
        if not self.verify_images or id(dataset) in self._verified or not names or not Path(names[0]).is_file():
            return
        bad = unreadable_images(names)
        if bad:
            raise UserError(f"--data.verify_images: {len(bad)} of {len(names)} images cannot be read; replace or "
                            f"delete them:\n  " + '\n  '.join(bad))
        self._verified.add(id(dataset))

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        self._verify(dataset)
        batch_size = self.device_batch_size if train else self.eval_batch_size
        seed = int(os.environ.get('PL_GLOBAL_SEED', 0))  # set by seed_everything
        sampler = None
        if train:
            trainer = self.trainer
            sampler = EpochSampler(dataset, trainer.world_size if trainer else 1, trainer.global_rank if trainer else 0,
                                   seed, drop_last=False)
            if self._resume:  # the epoch a checkpoint stopped in, less the batches it had trained on
                sampler.set_epoch(self._resume['epoch'] + self._resume['epoch_done'])
                sampler.skip = 0 if self._resume['epoch_done'] else self._resume['batches_done'] * batch_size
                self._resume = {}
            dataset = SeededSamples(dataset)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=train and len(dataset) >= batch_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn(),
            # a resumed run creates its training iterator where the uninterrupted one did not: its draw of the
            # worker seed comes from here, not from the stream that dropout and mixup continue
            generator=torch.Generator().manual_seed(seed) if train else None,
        )

    def state_dict(self) -> Dict[str, Any]:
        """Where training stands in its epoch, saved in every checkpoint for an exact resume."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != 'fit':  # also saved from validation within fit
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {'epoch': trainer.current_epoch, 'batches_done': done,
                'epoch_done': done >= trainer.num_training_batches}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._resume = dict(state_dict)
