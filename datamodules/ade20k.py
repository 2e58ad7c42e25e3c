"""ADE20K scene parsing (ADEChallengeData2016, 150 classes) in the official folder layout.

    root/images/training/*.jpg        root/annotations/training/*.png      (same stem)
    root/images/validation/*.jpg      root/annotations/validation/*.png

Annotations are single-channel PNGs of class indices. With ``reduce_zero_label`` (ADE20K's
convention, as in mmseg) raw 0 is "unlabelled" and becomes the ignore value 255, and raw
1..150 become classes 0..149. Any other dataset in this layout works by overriding the class
metadata (``CLASS_NAMES`` / ``PALETTE`` class attributes, or the ``class_names`` / ``palette``
arguments); see datamodules/synthetic_scenes.py.
"""
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from vir_lightning.errors import DataNotFoundError, UserError, listing
from vir_lightning.palette import default_palette
from .base import VisionDataModule
from .images import AlbumentationsTransform, ImageFiles, SeededTransform, list_images, load_rgb, predict_paths
from .seg_transforms import IGNORE_INDEX, segmentation_eval_transform, segmentation_train_transform

ADE20K_URL = 'http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip'
ANNOTATION_SUFFIX = '.png'


def load_label_map(path) -> np.ndarray:
    """An HW array of class indices from a single-channel PNG (mode L, P, I or I;16)."""
    try:
        with Image.open(path) as image:
            if image.mode not in ('L', 'P', 'I', 'I;16', 'I;16L', 'I;16B', '1'):
                raise UserError(
                    f"annotation '{path}' is a {image.mode} image; it must be a single-channel (mode L or P) "
                    f"PNG of class indices, not a colour rendering of the labels. Convert it to class indices "
                    f"(one value per class, 0 = unlabelled with --data.reduce_zero_label true).")
            return np.asarray(image)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise UserError(
            f"cannot read annotation '{path}': {error}. The file is corrupt, truncated or not a PNG: "
            f"replace it (re-extracting the dataset usually fixes this).") from error


def reduce_zero_label_lut(ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """mmseg's reduce_zero_label as a lookup table: 0 -> ignore, k -> k - 1, ignore stays ignore."""
    lut = (np.arange(256) - 1).astype(np.uint8)
    lut[0] = ignore_index
    lut[ignore_index] = ignore_index
    return lut


class SegmentationPairs(Dataset):
    """(image, annotation) file pairs; items are (image float [3, h, w], mask long [H, W]).

    With ``transform_mask`` (training) the mask goes through the transform with its image; without
    it (evaluation) the mask keeps its original size and the prediction is resized to it, as mmseg
    evaluates ADE20K at the original resolution.

    Each mask is checked when loaded: same size as its image, and only values of the
    ``num_classes`` classes (raw 0..num_classes with reduce_zero_label) or the ignore value.
    """

    def __init__(self, pairs: List[Tuple[Path, Path]], transform, num_classes: int,
                 reduce_zero_label: bool = True, ignore_index: int = IGNORE_INDEX, transform_mask: bool = True):
        self.pairs = pairs
        self.transform_mask = transform_mask
        self.transform = SeededTransform(transform)
        self.num_classes = num_classes
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index
        self.max_label = num_classes if reduce_zero_label else num_classes - 1
        self.lut = reduce_zero_label_lut(ignore_index) if reduce_zero_label else None

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """The image (HWC uint8 RGB) and its mask (HW uint8, reduced, 255 = ignore), before the transform."""
        image_path, label_path = self.pairs[index]
        image = load_rgb(image_path)
        label = load_label_map(label_path)
        if label.shape != image.shape[:2]:
            raise UserError(
                f"annotation '{label_path}' is {label.shape[1]}x{label.shape[0]} pixels but its image "
                f"'{image_path}' is {image.shape[1]}x{image.shape[0]}: a mask must have its image's size. "
                f"Fix or remove this pair.")
        return image, self._check_and_map(label, label_path)

    def _check_and_map(self, label: np.ndarray, path) -> np.ndarray:
        if label.size and (label.max() > self.max_label or label.min() < 0):
            values = np.unique(label)
            bad = values[((values < 0) | (values > self.max_label)) & (values != self.ignore_index)]
            if len(bad):
                shown = listing(int(v) for v in bad)
                raw = f"0 (unlabelled) or 1..{self.num_classes}" if self.reduce_zero_label \
                    else f"0..{self.num_classes - 1}"
                raise UserError(
                    f"annotation '{path}' has label values outside the {self.num_classes} classes: {shown}. "
                    f"Valid values are {raw}, or {self.ignore_index} (ignored), with "
                    f"--data.reduce_zero_label {str(self.reduce_zero_label).lower()}. Check that the mask "
                    f"holds class indices (not colours), that reduce_zero_label matches the data, and that "
                    f"the DataModule's class list is the dataset's.")
        label = label.astype(np.uint8, copy=False)
        return self.lut[label] if self.lut is not None else label

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        if not self.transform_mask:
            return self.transform(image=image)['image'], torch.from_numpy(mask).long()
        out = self.transform(image=image, mask=mask)
        return out['image'], out['mask'].long()

    @property
    def sample_names(self) -> List[str]:
        return [str(image) for image, _ in self.pairs]


class ADE20KDataModule(VisionDataModule):
    """ADE20K semantic segmentation with the mmseg training recipe, augmented with albumentations.

    Training batches: (images float [B, 3, crop, crop], masks long [B, crop, crop]), 255 = ignore
    (also where a small image was padded up to the crop). Validation, test and predict use one
    image per device (sizes differ): (image [1, 3, h, w], mask long [1, h, w]) resized to fit
    (4 * crop, crop) keeping the aspect ratio. Predict items carry a mask of 255s; the predict
    dataset's ``sample_names`` are the image paths.

    Args:
        root: the ADEChallengeData2016 folder (holding images/ and annotations/).
        batch_size: GLOBAL training batch; each of N devices loads batch_size / N.
        image_size: the training crop side (mmseg's crop_size; 512 for ADE20K).
        reduce_zero_label: raw 0 is "unlabelled" (-> 255, ignored) and raw k is class k - 1.
        train_split, val_split, test_split: folder names under images/ and annotations/
            (test defaults to the validation split).
        predict_dir: a folder of images for ``predict`` (default: the validation images).
        scale: the (long, short) resize target at ratio 1; default (4 * image_size, image_size),
            mmseg's (2048, 512) for a 512 crop.
        ratio_range: training rescale range of ``scale``.
        cat_max_ratio: training crops are re-drawn (up to 10 times) while one class covers this
            share of the labelled pixels or more; 1 disables.
        hflip: horizontal flip probability. photometric: mmseg's PhotoMetricDistortion.
        class_names, palette: override the class metadata (default: the class attributes
            CLASS_NAMES / PALETTE, which for ADE20K come from mmseg).
        verify_images: decode every image up front and report all unreadable files at once.
    """

    task = 'segmentation'

    CLASS_NAMES: Optional[Sequence[str]] = None  # None: ADE20K's 150, from mmseg
    PALETTE: Optional[Sequence[Tuple[int, int, int]]] = None
    DATASET_NAME = 'ADE20K'
    IMAGE_DIR, ANNOTATION_DIR = 'images', 'annotations'

    def __init__(
            self,
            root: str = 'data/ade/ADEChallengeData2016',
            batch_size: int = 16,
            num_workers: int = 4,
            image_size: int = 512,
            reduce_zero_label: bool = True,
            train_split: str = 'training',
            val_split: str = 'validation',
            test_split: Optional[str] = None,
            predict_dir: Optional[str] = None,
            scale: Optional[Tuple[int, int]] = None,
            ratio_range: Tuple[float, float] = (0.5, 2.0),
            cat_max_ratio: float = 0.75,
            hflip: float = 0.5,
            photometric: bool = True,
            class_names: Optional[List[str]] = None,
            palette: Optional[List[Tuple[int, int, int]]] = None,
            mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
            std: Sequence[float] = IMAGENET_DEFAULT_STD,
            verify_images: bool = False,
    ):
        super().__init__(root, batch_size, num_workers, image_size, mean, std, verify_images)
        self.save_hyperparameters(ignore=['class_names', 'palette'])  # the task logs these
        self.reduce_zero_label = reduce_zero_label
        self.train_split, self.val_split = train_split, val_split
        self.test_split = test_split or val_split
        self.predict_dir = Path(predict_dir).expanduser() if predict_dir else None
        self._class_names = list(class_names) if class_names else None
        self._palette = [tuple(int(v) for v in c) for c in palette] if palette else None
        if self._palette is not None and len(self._palette) != self.num_classes:
            raise UserError(f"--data.palette has {len(self._palette)} colours for {self.num_classes} classes")
        if self.num_classes > 255 or (reduce_zero_label and self.num_classes > 254):
            raise UserError(f"{self.num_classes} classes do not fit 8-bit masks with ignore value 255")
        if self.check_data_on_init():
            self.check_layout(self.required_splits())

    # ---- class metadata ----------------------------------------------------------------------
    @property
    def class_names(self) -> List[str]:
        if self._class_names is not None:
            return list(self._class_names)
        if self.CLASS_NAMES is not None:
            return list(self.CLASS_NAMES)
        from vir_lightning.mmseg import ade20k_metainfo  # mmseg only when ADE20K's own metadata is asked for
        return list(ade20k_metainfo()[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def palette(self) -> List[Tuple[int, int, int]]:
        if self._palette is not None:
            return list(self._palette)
        if self.PALETTE is not None:
            return [tuple(c) for c in self.PALETTE]
        if self.CLASS_NAMES is None and self._class_names is None:
            from vir_lightning.mmseg import ade20k_metainfo
            return list(ade20k_metainfo()[1])
        return default_palette(self.num_classes)  # a custom class list without colours

    @property
    def ignore_index(self) -> int:
        return IGNORE_INDEX

    # ---- layout ------------------------------------------------------------------------------
    def check_data_on_init(self) -> bool:
        """Check the folders at construction, so the CLI stops before building a model.

        Skipped for predict on a separate folder, which needs no dataset.
        """
        return self.predict_dir is None

    def required_splits(self, stage: Optional[str] = None) -> List[str]:
        if stage == 'fit':
            return [self.train_split, self.val_split]
        if stage == 'validate':
            return [self.val_split]
        if stage == 'test':
            return [self.test_split]
        if stage == 'predict':
            return [] if self.predict_dir else [self.val_split]
        return list(dict.fromkeys([self.train_split, self.val_split, self.test_split]))

    def image_dir(self, split: str) -> Path:
        return self.root / self.IMAGE_DIR / split

    def annotation_dir(self, split: str) -> Path:
        return self.root / self.ANNOTATION_DIR / split

    def missing_data_message(self, missing: Path) -> str:
        return (
            f"{self.DATASET_NAME} data not found: '{missing}' does not exist (--data.root is '{self.root}').\n"
            f"Expected layout (ADEChallengeData2016):\n"
            f"  {self.image_dir(self.train_split)}/<name>.jpg\n"
            f"  {self.annotation_dir(self.train_split)}/<name>.png\n"
            f"  {self.image_dir(self.val_split)}/<name>.jpg\n"
            f"  {self.annotation_dir(self.val_split)}/<name>.png\n"
            f"Download {ADE20K_URL} (about 920 MB), unzip it and pass --data.root "
            f"path/to/ADEChallengeData2016 (any dataset in this layout works).\n"
            f"To try segmentation without downloading anything, train on the synthetic demo scenes: "
            f"python -m vir_lightning fit --config seg_demo.yaml")

    def check_layout(self, splits: Sequence[str]) -> None:
        for split in splits:
            for folder in (self.image_dir(split), self.annotation_dir(split)):
                if not folder.is_dir():
                    raise DataNotFoundError(self.missing_data_message(folder))

    def find_pairs(self, split: str) -> List[Tuple[Path, Path]]:
        """(image, annotation) pairs of a split, matched by path relative to the split folder, minus suffix."""
        self.check_layout([split])
        image_dir, label_dir = self.image_dir(split), self.annotation_dir(split)
        images = {p.relative_to(image_dir).with_suffix(''): p for p in list_images(image_dir)}
        if not images:
            raise UserError(f"no images found under '{image_dir}' (looked for {', '.join(IMG_EXTENSIONS)})")
        labels = {p.relative_to(label_dir).with_suffix(''): p
                  for p in sorted(label_dir.rglob('*' + ANNOTATION_SUFFIX))}
        self._check_matching(images, labels, image_dir, label_dir)
        return [(images[key], labels[key]) for key in sorted(images)]

    @staticmethod
    def _check_matching(images: Dict[Path, Path], labels: Dict[Path, Path], image_dir: Path, label_dir: Path):
        unlabelled = sorted(images[k] for k in images.keys() - labels.keys())
        if unlabelled:
            raise UserError(
                f"{len(unlabelled)} image(s) in '{image_dir}' have no annotation in '{label_dir}' "
                f"(expected the same name with {ANNOTATION_SUFFIX}): {listing(repr(str(p)) for p in unlabelled)}. "
                f"Add the missing annotations or remove those images.")
        orphans = sorted(labels[k] for k in labels.keys() - images.keys())
        if orphans:
            raise UserError(
                f"{len(orphans)} annotation(s) in '{label_dir}' have no image in '{image_dir}' "
                f"(expected the same name with an image suffix such as .jpg): "
                f"{listing(repr(str(p)) for p in orphans)}. "
                f"Add the missing images or remove those annotations.")

    # ---- datasets ----------------------------------------------------------------------------
    def train_transform(self):
        hp = self.hparams
        return segmentation_train_transform(
            self.image_size, self.mean, self.std, scale=hp.scale, ratio_range=tuple(hp.ratio_range),
            cat_max_ratio=hp.cat_max_ratio, hflip=hp.hflip, photometric=hp.photometric,
            ignore_index=self.ignore_index)

    def eval_transform(self):
        return segmentation_eval_transform(self.image_size, self.mean, self.std, scale=self.hparams.scale)

    def _pairs_dataset(self, split: str, train: bool) -> SegmentationPairs:
        transform = self.train_transform() if train else self.eval_transform()
        return SegmentationPairs(self.find_pairs(split), transform, self.num_classes,
                                 self.reduce_zero_label, self.ignore_index, transform_mask=train)

    def setup(self, stage: str) -> None:
        if stage == 'fit':
            self.train_set = self._pairs_dataset(self.train_split, train=True)
        if stage in ('fit', 'validate'):
            self.val_set = self._pairs_dataset(self.val_split, train=False)
        if stage == 'test':
            self.test_set = self._pairs_dataset(self.test_split, train=False)
        if stage == 'predict':
            if self.predict_dir is not None:
                where, option = self.predict_dir, '--data.predict_dir'
            else:
                self.check_layout([self.val_split])
                where, option = self.image_dir(self.val_split), 'the validation split'
            self.predict_set = ImageFiles(predict_paths(where, option), AlbumentationsTransform(self.eval_transform()))

    @property
    def eval_batch_size(self) -> int:
        return 1  # evaluation images keep their own aspect ratio, so they cannot be stacked: one per device
