"""REAL aerial tree crowns as a small COCO detection set, so the detection demo needs no download.

The PyPI package deepforest 2.1.0 (MIT licence) ships, as its test data, NEON aerial RGB images
(about 10 cm per pixel) with hand-annotated tree-crown boxes in Pascal VOC XML. Installed with
``--no-deps`` it is only a folder of files: it is found with ``importlib`` and never imported (its
import pulls in its own dependencies, which would replace this project's torch).
``write_tree_crowns_coco`` converts four of its images once (a few seconds) into ``root``:

    root/train/*.png   the 2299x2472 Yellowstone image cut into tiles, plus OSBS_029 and SOAP_061 whole
    root/val/*.png     the 1249x1035 Yellowstone image whole, at full resolution (13 km from the train image)
    root/annotations/instances_{train,val}.json   COCO; one category, tree (Alive/Dead merged)
    root/full/*.png    the 2299x2472 image whole (no annotations), to try predict at full resolution
    root/README.txt    says what this is; its last line marks the folder complete (see prepared.py)

Boxes are the VOC pixel-edge coordinates as given: COCO bbox = [xmin, ymin, xmax - xmin, ymax - ymin].
A tile keeps a crown when at least ``min_visible`` of its box lies inside the tile, clipped to the tile.
951 crowns in four images: enough to see a detector learn on real data, too few to rank models.
"""
import importlib.util
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from vir_lightning.errors import DataNotFoundError, UserError
from .coco import COCODataModule
from .prepared import is_prepared, write_once

DEEPFOREST_VERSION = '2.1.0'
GENERATOR_VERSION = 1
GENERATOR = 'tree_crowns_coco'
FULL = 'full'  # the tiled image whole, unannotated: `predict --data.predict_images root/full`
TILED_TRAIN = '2019_YELL_2_528000_4978000_image_crop2'  # 574 crowns: cut into tiles
TILED_TRAIN_SIZE = (2299, 2472)  # width, height
WHOLE_TRAIN = ('OSBS_029', 'SOAP_061')  # 400x400, 61 and 37 crowns
VAL = '2019_YELL_2_541000_4977000_image_crop'  # 1249x1035, 279 crowns: held out, whole
CATEGORIES = [{'id': 1, 'name': 'tree', 'supercategory': 'plant'}]
INFO = {
    'description': 'NEON aerial RGB images with hand-annotated tree crowns, converted by vir_lightning',
    'contributor': f'source: deepforest {DEEPFOREST_VERSION} (MIT licence) test data, NEON aerial imagery',
    'url': 'https://github.com/weecology/DeepForest',
    'version': str(GENERATOR_VERSION),
}
LICENSES = [{'id': 1, 'name': 'MIT (deepforest package)', 'url': 'https://github.com/weecology/DeepForest'}]


def deepforest_data_dir() -> Path:
    """deepforest's data folder, located without importing deepforest."""
    spec = importlib.util.find_spec('deepforest')
    folder = Path(spec.submodule_search_locations[0]) / 'data' if spec and spec.submodule_search_locations else None
    missing = folder is None or not all((folder / f'{stem}.{ext}').is_file()
                                        for stem in (TILED_TRAIN, *WHOLE_TRAIN, VAL) for ext in ('png', 'xml'))
    if missing:
        problem = 'is not installed' if folder is None else f"lacks some of them in '{folder}' (another version?)"
        raise DataNotFoundError(
            f"the detection demo reads the tree-crown images shipped in the deepforest package, which {problem}. "
            f"Install them with `pip install --no-deps deepforest=={DEEPFOREST_VERSION}` (--no-deps: its "
            f"dependencies would replace this project's torch), or point --data.root at any COCO-format folder.")
    return folder


def read_voc_boxes(xml_path: Path) -> np.ndarray:
    """The boxes of a Pascal VOC file: (N, 4) float64 xmin, ymin, xmax, ymax, pixel edges as given."""
    objects = ET.parse(xml_path).getroot().iter('object')
    boxes = [[float(obj.find(f'bndbox/{edge}').text) for edge in ('xmin', 'ymin', 'xmax', 'ymax')] for obj in objects]
    return np.asarray(boxes, np.float64).reshape(-1, 4)


def tile_origins(length: int, tile_size: int, stride: int) -> List[int]:
    """0, stride, 2 * stride, ... and a last tile flush with the border, so that the tiles cover every pixel."""
    origins = list(range(0, length - tile_size + 1, stride))
    if origins[-1] != length - tile_size:
        origins.append(length - tile_size)
    return origins


def boxes_in_window(boxes: np.ndarray, x: int, y: int, width: int, height: int, min_visible: float) -> np.ndarray:
    """Boxes clipped to a window, in its coordinates; a box with less than min_visible of its area inside is dropped."""
    clipped = np.clip(boxes - [x, y, x, y], 0, [width, height, width, height])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    return clipped[visible >= min_visible * area]


class _CocoSplit:
    """One split's folder of PNGs and its COCO dictionary, filled image by image."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.images: List[dict] = []
        self.annotations: List[dict] = []
        folder.mkdir(parents=True)

    def add(self, image: Image.Image, name: str, boxes: np.ndarray) -> None:
        image.save(self.folder / f'{name}.png')
        image_id = len(self.images) + 1
        self.images.append({'id': image_id, 'file_name': f'{name}.png', 'width': image.width, 'height': image.height})
        for x0, y0, x1, y1 in boxes.tolist():
            self.annotations.append({
                'id': len(self.annotations) + 1, 'image_id': image_id, 'category_id': 1,
                'bbox': [x0, y0, x1 - x0, y1 - y0], 'area': (x1 - x0) * (y1 - y0), 'iscrowd': 0})

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        coco = {'info': INFO, 'licenses': LICENSES, 'images': self.images, 'annotations': self.annotations,
                'categories': CATEGORIES}
        path.write_text(json.dumps(coco))


def _convert(source: Path, root: Path, tile_size: int, stride: int, min_visible: float) -> Dict[str, int]:
    """Write the train tiles, the whole images and both JSONs into root; returns the counts."""
    train, val = _CocoSplit(root / 'train'), _CocoSplit(root / 'val')
    with Image.open(source / f'{TILED_TRAIN}.png') as opened:
        image = opened.convert('RGB')
    boxes = read_voc_boxes(source / f'{TILED_TRAIN}.xml')
    for y in tile_origins(image.height, tile_size, stride):
        for x in tile_origins(image.width, tile_size, stride):
            tile = image.crop((x, y, x + tile_size, y + tile_size))
            train.add(tile, f'{TILED_TRAIN}_x{x:04d}_y{y:04d}',
                      boxes_in_window(boxes, x, y, tile_size, tile_size, min_visible))
    (root / FULL).mkdir()
    image.save(root / FULL / f'{TILED_TRAIN}.png')  # whole, for full-resolution predict demos
    for split, stem in [(train, name) for name in WHOLE_TRAIN] + [(val, VAL)]:
        with Image.open(source / f'{stem}.png') as opened:
            image = opened.convert('RGB')
        boxes = read_voc_boxes(source / f'{stem}.xml')
        split.add(image, stem, boxes_in_window(boxes, 0, 0, image.width, image.height, min_visible))
    train.write_json(root / 'annotations' / 'instances_train.json')
    val.write_json(root / 'annotations' / 'instances_val.json')
    return {'train_images': len(train.images), 'train_boxes': len(train.annotations),
            'val_images': len(val.images), 'val_boxes': len(val.annotations)}


def _signature(tile_size: int, stride: int, min_visible: float) -> str:
    return (f'generator: {GENERATOR} v{GENERATOR_VERSION} tile={tile_size} stride={stride} '
            f'min_visible={float(min_visible)}')


def _readme(counts: Dict[str, int], tile_size: int, stride: int, min_visible: float) -> str:
    return (
        "REAL AERIAL IMAGES - TREE-CROWN DETECTION DEMO (COCO format)\n\n"
        "NEON (US National Ecological Observatory Network) aerial RGB images, about 10 cm per pixel,\n"
        "with hand-annotated tree-crown boxes, taken from the test data of the deepforest\n"
        f"{DEEPFOREST_VERSION} package (MIT licence, https://github.com/weecology/DeepForest) by\n"
        "vir_lightning's datamodules/tree_crowns.py. One category: 1 tree (deepforest's\n"
        "Alive/Dead labels on SOAP_061 are merged).\n\n"
        f"train: {counts['train_images']} images, {counts['train_boxes']} boxes\n"
        f"  {TILED_TRAIN}.png ({TILED_TRAIN_SIZE[0]}x{TILED_TRAIN_SIZE[1]}, Yellowstone)\n"
        f"  cut into {counts['train_images'] - len(WHOLE_TRAIN)} tiles of {tile_size}x{tile_size}, stride {stride}, "
        "the last row and column flush with the border;\n"
        f"  a crown is kept in a tile, clipped, when at least {min_visible:.0%} of its box is inside\n"
        f"  {WHOLE_TRAIN[0]}.png and {WHOLE_TRAIN[1]}.png whole (400x400, Florida and California)\n"
        f"val: {counts['val_images']} image, {counts['val_boxes']} boxes\n"
        f"  {VAL}.png (1249x1035, Yellowstone, 13 km from the\n"
        "  train image) whole, at full resolution: no part of it is in train\n\n"
        "Layout: train/*.png, val/*.png, annotations/instances_{train,val}.json\n"
        f"full/{TILED_TRAIN}.png: the tiled image whole, to try predict at full resolution.\n"
        "(bbox = [x, y, width, height] in pixels, VOC pixel edges as given).\n"
        "Few images: scores measured on it show that a detector learns on real data, not how it\n"
        "ranks against others. Delete this folder to regenerate it.\n")


def _check_parameters(tile_size: int, stride: int, min_visible: float) -> None:
    smallest_side = min(TILED_TRAIN_SIZE)
    if not 1 <= tile_size <= smallest_side:
        raise UserError(f"tile_size must be between 1 and {smallest_side} (the tiled image's width), got {tile_size}")
    if not 1 <= stride <= tile_size:
        raise UserError(f"stride must be between 1 and tile_size ({tile_size}) so no pixel is skipped, got {stride}")
    if not 0 < min_visible <= 1:
        raise UserError(f"min_visible is a fraction of a box's area, in (0, 1], got {min_visible}")


def is_complete(root: Union[str, Path], tile_size: int = 400, stride: int = 400, min_visible: float = 0.5) -> bool:
    """Whether root holds the finished conversion made with these parameters."""
    return is_prepared(Path(root), _signature(tile_size, stride, min_visible))


def write_tree_crowns_coco(root: Union[str, Path], tile_size: int = 400, stride: int = 400,
                           min_visible: float = 0.5) -> Dict[str, int]:
    """Convert deepforest's tree crowns into a COCO folder at root, unless it is there; returns the counts
    ``{'train_images', 'train_boxes', 'val_images', 'val_boxes'}``.

    Written once and atomically (``prepared.write_once``); a conversion made with other parameters
    is replaced, a non-empty folder that is not one raises.
    """
    root = Path(root)
    _check_parameters(tile_size, stride, min_visible)
    signature = _signature(tile_size, stride, min_visible)
    if not is_prepared(root, signature):
        source = deepforest_data_dir()

        def convert(folder: Path) -> str:
            return _readme(_convert(source, folder, tile_size, stride, min_visible), tile_size, stride, min_visible)

        write_once(root, signature, GENERATOR, 'tree-crown demo', convert)
    return _read_counts(root)


def _read_counts(root: Path) -> Dict[str, int]:
    counts = {}
    for split in ('train', 'val'):
        coco = json.loads((root / 'annotations' / f'instances_{split}.json').read_text())
        counts[f'{split}_images'], counts[f'{split}_boxes'] = len(coco['images']), len(coco['annotations'])
    return counts


class TreeCrownsDataModule(COCODataModule):
    """REAL aerial tree crowns (deepforest's NEON images) as a COCO set, converted on first use: the
    detection demo. It reads through COCODataModule, so training on it exercises the COCO code path.

    By default images keep their 10 cm pixels (``keep_resolution``): training takes ``image_size``
    crops of the tiles with flips both ways (aerial views have no up), validation runs the held-out
    1249x1035 image whole, and predict can run any image at full size (e.g. the 2299x2472 one).
    ``keep_resolution=False`` resizes every image to a longest side of ``image_size`` instead.

    Args:
        root: where the COCO folder is written.
        tile_size, stride, min_visible: how the large training image is cut (see ``write_tree_crowns_coco``).
        Others: as COCODataModule.
    """

    DATASET_NAME = 'tree-crown demo'

    def __init__(
            self,
            root: str = 'data/det_demo',
            batch_size: int = 8,
            num_workers: int = 0,
            image_size: int = 256,
            tile_size: int = 400,
            stride: int = 400,
            min_visible: float = 0.5,
            predict_images: Optional[str] = None,
            keep_resolution: bool = True,
            hflip: float = 0.5,
            vflip: float = 0.5,
            mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
            std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ):
        _check_parameters(tile_size, stride, min_visible)
        self.tile_size, self.stride, self.min_visible = tile_size, stride, min_visible
        super().__init__(
            root, batch_size, num_workers, image_size, train_images='train', val_images='val',
            train_annotations='annotations/instances_train.json', val_annotations='annotations/instances_val.json',
            predict_images=predict_images, keep_resolution=keep_resolution, hflip=hflip, vflip=vflip, mean=mean,
            std=std)

    def check_data_on_init(self) -> bool:
        return False  # written by prepare_data

    def prepare_data(self) -> None:
        """Convert deepforest's images into root unless they are there (about 2 s, atomic)."""
        write_tree_crowns_coco(self.root, self.tile_size, self.stride, self.min_visible)

    def annotations(self, split: str):
        if not is_complete(self.root, self.tile_size, self.stride, self.min_visible):
            self.prepare_data()  # class metadata asked for before the Trainer ran prepare_data
        return super().annotations(split)
