"""ImageNet-layout classification data: root/train/<class>/*.jpg, root/val/<class>/*.jpg."""
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from lightning.pytorch.utilities import rank_zero_warn
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from vir_lightning.errors import DataNotFoundError, UserError, listing
from .base import VisionDataModule
from .images import AlbumentationsTransform, ImageFiles, image_files, load_rgb, predict_paths
from .transforms import classification_eval_transform, classification_train_transform, build_rand_augment


class ClassFolder(ImageFolder):
    """torchvision's ImageFolder with the class list fixed by the training split, so indices agree."""

    def __init__(self, root: Path, classes: List[str], transform=None):
        self.fixed_classes = classes
        super().__init__(str(root), transform=transform, loader=load_rgb, allow_empty=True)

    def find_classes(self, directory: str) -> Tuple[List[str], dict]:
        present = {entry.name for entry in os.scandir(directory) if entry.is_dir()}
        unknown = sorted(present - set(self.fixed_classes))
        if unknown:
            raise UserError(
                f"'{directory}' has class folders that the training split lacks: {listing(unknown)}. "
                f"Every evaluation class must also be a training class.")
        return self.fixed_classes, {name: i for i, name in enumerate(self.fixed_classes)}

    @property
    def sample_names(self) -> List[str]:
        return [path for path, _ in self.samples]


class ImageFolderDataModule(VisionDataModule):
    """Folder-per-class classification data (ImageNet layout), augmented with albumentations.

    Args:
        train_dir, val_dir, test_dir: split folders under root (test defaults to val).
        predict_dir: a folder of unlabelled images for ``predict`` (defaults to the val split).
        expected_num_classes: if set, fail early when the data has a different number of classes.
        crop_pct: evaluation resize is image_size / crop_pct before the centre crop.
        scale, color_jitter, random_erasing: training augmentation strengths.
        rand_augment: a timm RandAugment policy applied before the albumentations pipeline,
            e.g. 'rand-m9-mstd0.5-inc1' (the DeiT/ViR recipe); None disables it.
        verify_images: decode every image up front and report all unreadable files at once.
    """

    task = 'classification'

    def __init__(
            self,
            root: str = 'data/imagenet',
            batch_size: int = 64,
            num_workers: int = 4,
            image_size: int = 224,
            train_dir: str = 'train',
            val_dir: str = 'val',
            test_dir: Optional[str] = None,
            predict_dir: Optional[str] = None,
            expected_num_classes: Optional[int] = None,
            crop_pct: float = 0.875,
            scale: Tuple[float, float] = (0.08, 1.0),
            color_jitter: float = 0.4,
            random_erasing: float = 0.25,
            rand_augment: Optional[str] = None,
            mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
            std: Sequence[float] = IMAGENET_DEFAULT_STD,
            verify_images: bool = False,
    ):
        super().__init__(root, batch_size, num_workers, image_size, mean, std, verify_images)
        self.save_hyperparameters()
        self.train_dir, self.val_dir = self.root / train_dir, self.root / val_dir
        self.test_dir = self.root / test_dir if test_dir else self.val_dir
        self.predict_dir = Path(predict_dir).expanduser() if predict_dir else None
        if rand_augment:
            build_rand_augment(rand_augment)  # a malformed policy fails here, before any model is built
        self.classes = self._find_classes()
        if expected_num_classes is not None and expected_num_classes != len(self.classes):
            raise UserError(
                f"--data.expected_num_classes is {expected_num_classes} but '{self.train_dir}' has "
                f"{len(self.classes)} class folders; fix the data or the option")

    def _find_classes(self) -> List[str]:
        for folder in (self.train_dir, self.val_dir):
            if not folder.is_dir():
                raise DataNotFoundError(
                    f"image-classification data not found: '{folder}' does not exist.\n"
                    f"Expected layout (ImageNet style):\n"
                    f"  {self.train_dir}/<class_name>/<image>.jpg\n"
                    f"  {self.val_dir}/<class_name>/<image>.jpg\n"
                    f"ImageNet-1k: download ILSVRC2012 from https://image-net.org/download and sort the "
                    f"validation images into class folders; or point --data.root at any folder in this layout.\n"
                    f"To try the project without downloading anything: "
                    f"python -m vir_lightning fit --config cls_demo.yaml")
        classes = sorted(entry.name for entry in os.scandir(self.train_dir) if entry.is_dir())
        if not classes:
            raise UserError(f"'{self.train_dir}' has no class folders; expected {self.train_dir}/<class_name>/*.jpg")
        empty = [name for name in classes if not any(image_files(self.train_dir / name))]
        if empty:  # kept, so class indices match the folder names; but the model can never learn them
            rank_zero_warn(f"'{self.train_dir}' has {len(empty)} class folders without images, kept as classes "
                           f"that the model cannot learn: {listing(empty)}. Delete them if they are not classes.")
        return classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> List[str]:
        return list(self.classes)

    def _folder(self, folder: Path, train: bool) -> ClassFolder:
        hp = self.hparams
        pipeline = classification_train_transform(
            self.image_size, self.mean, self.std, hp.scale, color_jitter=hp.color_jitter,
            random_erasing=hp.random_erasing,
        ) if train else classification_eval_transform(self.image_size, self.mean, self.std, hp.crop_pct)
        policy = build_rand_augment(hp.rand_augment) if train and hp.rand_augment else None
        dataset = ClassFolder(folder, self.classes, AlbumentationsTransform(pipeline, policy))
        if len(dataset) == 0:
            raise UserError(f"no images found under '{folder}' (looked for {', '.join(IMG_EXTENSIONS)})")
        return dataset

    def setup(self, stage: str) -> None:
        if stage == 'fit':
            self.train_set = self._folder(self.train_dir, train=True)
        if stage in ('fit', 'validate'):
            self.val_set = self._folder(self.val_dir, train=False)
        if stage == 'test':
            self.test_set = self._folder(self.test_dir, train=False)
        if stage == 'predict':
            eval_transform = AlbumentationsTransform(
                classification_eval_transform(self.image_size, self.mean, self.std, self.hparams.crop_pct))
            self.predict_set = ImageFiles(predict_paths(self.predict_dir, '--data.predict_dir'), eval_transform) \
                if self.predict_dir else self._folder(self.val_dir, train=False)
