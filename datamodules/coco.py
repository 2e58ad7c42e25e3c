"""Object detection on COCO-format data (COCO 2017 or any folder written in its layout).

    root/annotations/instances_train2017.json     root/train2017/<file_name>
    root/annotations/instances_val2017.json       root/val2017/<file_name>

Category ids (COCO's run 1..90 with gaps) become contiguous labels 1..K in sorted id order
(0 is the detectors' background); ``category_ids[label - 1]`` maps a label back, so written
predictions carry the original ids. Crowd boxes are left out of training and kept, flagged,
for evaluation (COCO ignores detections matched to them). Images without boxes are kept.
Boxes reaching outside their image are clipped and zero-area or inverted ones dropped, both
counted in one warning per file; unknown category ids, missing images and malformed JSON stop
with an error naming the file.
"""
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from vir_lightning.errors import DataNotFoundError, UserError, listing
from .base import VisionDataModule
from .det_transforms import detection_eval_transform, detection_train_transform
from .images import AlbumentationsTransform, ImageFiles, SeededTransform, load_rgb, predict_paths

COCO_URL = 'https://cocodataset.org/#download'


@dataclass
class CocoAnnotations:
    """One annotation file, checked and indexed by image: boxes xyxy in pixels, labels 1..K."""

    path: Path
    images: List[dict]                  # {'id', 'file_name', 'width', 'height'}
    boxes: Dict[int, np.ndarray]        # image id -> float32 [N, 4]
    labels: Dict[int, np.ndarray]       # image id -> int64 [N], contiguous 1..K
    iscrowd: Dict[int, np.ndarray]      # image id -> int64 [N]
    categories: List[dict]              # sorted by id

    @property
    def category_ids(self) -> List[int]:
        return [c['id'] for c in self.categories]


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding='utf-8') as file:
            data = json.load(file)
    except json.JSONDecodeError as error:
        raise UserError(f"annotation file '{path}' is not valid JSON: {error.msg} at line {error.lineno}, "
                        f"column {error.colno}. Re-download or re-export it.") from error
    except UnicodeDecodeError as error:
        raise UserError(f"annotation file '{path}' is not UTF-8 text: {error}") from error
    if not isinstance(data, dict):
        raise UserError(f"annotation file '{path}' must hold a JSON object with 'images', 'annotations' and "
                        f"'categories'; it holds a {type(data).__name__}")
    for key in ('images', 'annotations', 'categories'):
        if not isinstance(data.get(key), list):
            raise UserError(f"annotation file '{path}' has no '{key}' list: a COCO detection file needs "
                            f"'images', 'annotations' and 'categories'")
    return data


def _entry(path: Path, kind: str, entry, keys: Sequence[str]) -> None:
    missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
    if missing:
        raise UserError(f"annotation file '{path}': an entry of '{kind}' lacks {', '.join(missing)}: {entry!r:.200}")


def load_coco_annotations(path: Path, categories: Optional[List[dict]] = None) -> CocoAnnotations:
    """Parse and check a COCO detection file; ``categories`` (the training file's) fixes the label map."""
    data = _read_json(path)
    for category in data['categories']:
        _entry(path, 'categories', category, ('id', 'name'))
    from_training_file = categories is not None
    categories = sorted(categories if from_training_file else data['categories'], key=lambda c: c['id'])
    label_of = {c['id']: label for label, c in enumerate(categories, start=1)}
    images = []
    for image in data['images']:
        _entry(path, 'images', image, ('id', 'file_name'))
        images.append({k: image.get(k) for k in ('id', 'file_name', 'width', 'height')})
    sizes = {image['id']: (image['width'], image['height']) for image in images}
    found: Dict[int, list] = {image['id']: [] for image in images}
    unknown_categories, unknown_images, clipped, dropped = set(), set(), 0, []
    for ann in data['annotations']:
        _entry(path, 'annotations', ann, ('image_id', 'category_id', 'bbox'))
        if ann['category_id'] not in label_of:
            unknown_categories.add(ann['category_id'])
            continue
        if ann['image_id'] not in found:
            unknown_images.add(ann['image_id'])
            continue
        bbox = ann['bbox']
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise UserError(f"annotation file '{path}': annotation {ann.get('id')} has bbox {bbox!r}; "
                            f"COCO boxes are [x, y, width, height] numbers")
        x, y, w, h = (float(v) for v in bbox)
        box = [x, y, x + w, y + h]
        if w <= 0 or h <= 0:
            dropped.append(ann.get('id'))
            continue
        width, height = sizes[ann['image_id']]
        if width and height:  # sizes are optional in COCO files; the dataset clips again to the real image
            inside = [min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
                      min(max(box[2], 0.0), width), min(max(box[3], 0.0), height)]
            if inside[2] <= inside[0] or inside[3] <= inside[1]:  # wholly outside: nothing left
                dropped.append(ann.get('id'))
                continue
            clipped += inside != box
            box = inside
        found[ann['image_id']].append((box, label_of[ann['category_id']], int(bool(ann.get('iscrowd', 0)))))
    if unknown_categories:
        known = listing((f"{c['id']} ({c['name']})" for c in categories), limit=20)
        raise UserError(
            f"annotation file '{path}' uses category id(s) {listing(sorted(unknown_categories))} that are not among "
            f"the categories{' of the training file' if from_training_file else ''}: "
            f"{known}. Fix those annotations or add the categories.")
    if unknown_images:
        raise UserError(f"annotation file '{path}' has annotations for image id(s) "
                        f"{listing(sorted(unknown_images))} that are not in its 'images' list")
    if clipped or dropped:
        parts = [f"{clipped} box(es) reaching outside their image were clipped to it"] if clipped else []
        if dropped:
            parts.append(f"{len(dropped)} box(es) with zero or negative width/height (or wholly outside their "
                         f"image) were dropped (annotation ids {listing(dropped)})")
        warnings.warn(f"'{path}': {'; '.join(parts)}", UserWarning, stacklevel=2)

    def stack(image_id: int, index: int, dtype) -> np.ndarray:
        values = [item[index] for item in found[image_id]]
        return np.asarray(values, dtype=dtype).reshape((-1, 4) if index == 0 else (-1,))

    return CocoAnnotations(
        path=path, images=images, categories=[dict(c) for c in categories],
        boxes={i: stack(i, 0, np.float32) for i in found}, labels={i: stack(i, 1, np.int64) for i in found},
        iscrowd={i: stack(i, 2, np.int64) for i in found})


def collate_detection(batch):
    """Images differ in size: a list of images and a list of target dicts (torchvision's format)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def _target(image_id: int, original: np.ndarray, out: dict) -> dict:
    """The torchvision target of a transformed sample (``out``: albumentations' output)."""
    return {
        'boxes': torch.as_tensor(np.asarray(out['bboxes'], np.float32).reshape(-1, 4)),
        'labels': torch.as_tensor(np.asarray(out['labels'], np.int64)),
        'iscrowd': torch.as_tensor(np.asarray(out['iscrowd'], np.int64)),
        'image_id': torch.tensor(image_id),
        'orig_size': torch.tensor(original.shape[:2]),  # (h, w) of the file
        'size': torch.tensor(out['image'].shape[-2:]),  # (h, w) after the transform
    }


class CocoDetection(Dataset):
    """Items: (image float [3, h, w], target) with target boxes xyxy in the transformed image's pixels,
    labels 1..K, iscrowd, image_id, orig_size and size (to map boxes back to the file's pixels).

    ``train=True`` leaves crowd boxes out (torchvision's losses know no ignore regions).
    """

    def __init__(self, annotations: CocoAnnotations, image_dir: Path, transform, train: bool):
        self.annotations = annotations
        self.image_dir = Path(image_dir)
        self.transform = SeededTransform(transform)
        self.train = train

    def __len__(self) -> int:
        return len(self.annotations.images)

    def __getitem__(self, index: int):
        info = self.annotations.images[index]
        image = load_rgb(self.image_dir / info['file_name'])
        image_id = info['id']
        boxes, labels = self.annotations.boxes[image_id], self.annotations.labels[image_id]
        iscrowd = self.annotations.iscrowd[image_id]
        if self.train:
            keep = iscrowd == 0
            boxes, labels, iscrowd = boxes[keep], labels[keep], iscrowd[keep]
        height, width = image.shape[:2]
        boxes = np.clip(boxes, 0, [width, height, width, height])  # JSON sizes may disagree with the file
        out = self.transform(image=image, bboxes=boxes, labels=labels, iscrowd=iscrowd)
        return out['image'], _target(image_id, image, out)

    @property
    def sample_names(self) -> List[str]:
        return [str(self.image_dir / info['file_name']) for info in self.annotations.images]


class COCODataModule(VisionDataModule):
    """COCO-format detection: batches are (list of images, list of torchvision target dicts).

    Args:
        root: the dataset folder.
        batch_size: GLOBAL training batch; each of N devices loads batch_size / N.
        image_size: longest image side for training and evaluation (1024 in ViTDet); with
            ``keep_resolution`` the side of the random training crops instead.
        train_images, val_images: image folders under root; train_annotations, val_annotations:
            their COCO JSON files, relative to root.
        predict_images: a folder or an image file for ``predict`` (default: the validation images).
        keep_resolution: never resize: train on ``image_size`` crops at the native pixel scale and
            evaluate / predict whole images at full resolution (aerial and other high-resolution data).
        large_scale_jitter: rescale training images by a random factor in ``jitter_scale`` and
            crop/pad to an ``image_size`` square (ViTDet's LSJ).
        hflip, vflip: flip probabilities in training.
        verify_images: decode every image up front and report all unreadable files at once.
    """

    task = 'detection'

    DATASET_NAME = 'COCO'

    def __init__(
            self,
            root: str = 'data/coco',
            batch_size: int = 16,
            num_workers: int = 4,
            image_size: int = 1024,
            train_images: str = 'train2017',
            val_images: str = 'val2017',
            train_annotations: str = 'annotations/instances_train2017.json',
            val_annotations: str = 'annotations/instances_val2017.json',
            predict_images: Optional[str] = None,
            keep_resolution: bool = False,
            large_scale_jitter: bool = False,
            jitter_scale: Tuple[float, float] = (0.1, 2.0),
            hflip: float = 0.5,
            vflip: float = 0.0,
            mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
            std: Sequence[float] = IMAGENET_DEFAULT_STD,
            verify_images: bool = False,
    ):
        super().__init__(root, batch_size, num_workers, image_size, mean, std, verify_images)
        self.save_hyperparameters()
        self.splits = {'train': (train_images, train_annotations), 'val': (val_images, val_annotations)}
        self.predict_images = Path(predict_images).expanduser() if predict_images else None
        self.keep_resolution, self.large_scale_jitter, self.jitter_scale = \
            keep_resolution, large_scale_jitter, tuple(jitter_scale)
        self.hflip, self.vflip = hflip, vflip
        self._annotations: Dict[str, CocoAnnotations] = {}
        if self.check_data_on_init():
            self.check_layout(('train', 'val'))

    # ---- layout --------------------------------------------------------------------------------
    def check_data_on_init(self) -> bool:
        """Check the files at construction, so the CLI stops before building a model."""
        return True

    def split_paths(self, split: str) -> Tuple[Path, Path]:
        """(image folder, annotation file) of 'train' or 'val'."""
        images, annotations = self.splits[split]
        return self.root / images, self.root / annotations

    def missing_data_message(self, missing: Path) -> str:
        train_dir, train_json = self.split_paths('train')
        val_dir, val_json = self.split_paths('val')
        return (
            f"{self.DATASET_NAME} data not found: '{missing}' does not exist (--data.root is '{self.root}').\n"
            f"Expected layout:\n  {train_json}\n  {val_json}\n  {train_dir}/<file_name>\n  {val_dir}/<file_name>\n"
            f"Download the 2017 train/val images and annotations from {COCO_URL}, unzip them into one folder "
            f"and pass --data.root path/to/coco; other names are set with --data.train_images, "
            f"--data.train_annotations, --data.val_images, --data.val_annotations (any COCO-format data works).\n"
            f"To try detection without downloading anything: python -m vir_lightning fit --config det_demo.yaml")

    def check_layout(self, splits: Sequence[str]) -> None:
        for split in splits:
            image_dir, annotation_file = self.split_paths(split)
            for path, exists in ((annotation_file, annotation_file.is_file()), (image_dir, image_dir.is_dir())):
                if not exists:
                    raise DataNotFoundError(self.missing_data_message(path))

    def annotations(self, split: str) -> CocoAnnotations:
        """The checked annotations of a split (parsed once); validation uses the training label map."""
        if split not in self._annotations:
            self.check_layout([split])
            image_dir, path = self.split_paths(split)
            categories = self.annotations('train').categories if split != 'train' else None
            annotations = load_coco_annotations(path, categories)
            self._check_images(annotations, image_dir)
            self._annotations[split] = annotations
        return self._annotations[split]

    @staticmethod
    def _check_images(annotations: CocoAnnotations, image_dir: Path) -> None:
        present = {str(p.relative_to(image_dir)) for p in image_dir.rglob('*') if p.is_file()}
        missing = [i['file_name'] for i in annotations.images if i['file_name'] not in present]
        if missing:
            raise UserError(
                f"{len(missing)} image(s) listed in '{annotations.path}' are missing from '{image_dir}': "
                f"{listing(missing)}. Restore them, fix --data.*_images, or remove them from the JSON.")

    # ---- class metadata --------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.annotations('train').categories)

    @property
    def class_names(self) -> List[str]:
        return [str(c['name']) for c in self.annotations('train').categories]

    @property
    def category_ids(self) -> List[int]:
        """The original category id of each label (label k -> category_ids[k - 1])."""
        return self.annotations('train').category_ids

    # ---- datasets --------------------------------------------------------------------------------
    def train_transform(self):
        return detection_train_transform(
            self.image_size, self.mean, self.std, keep_resolution=self.keep_resolution,
            large_scale_jitter=self.large_scale_jitter, jitter_scale=self.jitter_scale, hflip=self.hflip,
            vflip=self.vflip)

    def eval_transform(self):
        return detection_eval_transform(None if self.keep_resolution else self.image_size, self.mean, self.std)

    def _dataset(self, split: str, train: bool) -> CocoDetection:
        transform = self.train_transform() if train else self.eval_transform()
        return CocoDetection(self.annotations(split), self.split_paths(split)[0], transform, train=train)

    def setup(self, stage: str) -> None:
        if stage == 'fit':
            self.train_set = self._dataset('train', train=True)
        if stage in ('fit', 'validate', 'test'):
            self.val_set = self._dataset('val', train=False)
        if stage == 'predict':
            if self.predict_images is None:
                self.predict_set = self._dataset('val', train=False)
                return
            no_boxes = {'bboxes': np.zeros((0, 4), np.float32), 'labels': [], 'iscrowd': []}
            self.predict_set = ImageFiles(predict_paths(self.predict_images, '--data.predict_images'),
                                          AlbumentationsTransform(self.eval_transform(), fields=no_boxes))

    def collate_fn(self):
        return collate_detection

    @property
    def eval_batch_size(self) -> int:
        """One image per device, as Detectron2 evaluates: a batch pads its images to a common size, and
        with global token mixing the padding would change the detections of the smaller images."""
        return 1
