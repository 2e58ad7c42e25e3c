import json
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')

class LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor any operation returns (memory tests: what a computation holds at once)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


# A ViR small enough for CPU tests: 2 blocks, 32 wide, patch 8.
TINY_VIR = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32, init_values=1.0)


def write_image(path: Path, color, size=(40, 36), mode='RGB') -> None:
    """A solid image with a little noise; `color` decides the class, so a model can learn it."""
    rng = np.random.default_rng(zlib.crc32(f'{path.parent.name}/{path.name}'.encode()))  # same noise every run
    array = np.clip(np.array(color, dtype=np.float32) + rng.normal(0, 12, (size[1], size[0], 3)), 0, 255)
    image = Image.fromarray(array.astype(np.uint8))
    if mode != 'RGB':
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


COLORS = {'red': (220, 30, 30), 'green': (30, 200, 40), 'blue': (30, 40, 220)}


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """root/{train,val}/{red,green,blue}/*.png, with a grayscale and an RGBA file among them."""
    root = tmp_path / 'imagenet_like'
    for split, count in (('train', 8), ('val', 4)):
        for name, color in COLORS.items():
            for i in range(count):
                write_image(root / split / name / f'{i}.png', color)
    write_image(root / 'train' / 'red' / 'gray.png', COLORS['red'], mode='L')
    write_image(root / 'train' / 'green' / 'alpha.png', COLORS['green'], mode='RGBA')
    return root


# COCO-format detection data: bright squares (category 3) and bars (category 7) on dark noise.
COCO_CATEGORIES = [{'id': 3, 'name': 'square'}, {'id': 7, 'name': 'bar'}]
SHAPES = {3: ((20, 20), (230, 50, 50)), 7: ((36, 12), (50, 60, 230))}


def write_coco(root: Path, split: str, num_images: int, seed: int = 0, extra_annotations=(), **json_overrides):
    """root/<split>/*.jpg and root/annotations/instances_<split>.json; returns the JSON dict."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    (root / split).mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        width, height = int(rng.integers(90, 140)), int(rng.integers(90, 140))
        pixels = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
        for k in range(int(rng.integers(1, 4))):
            category = COCO_CATEGORIES[k % 2]['id']
            (w, h), color = SHAPES[category]
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            pixels[y:y + h, x:x + w] = color
            annotations.append({'id': len(annotations) + 1, 'image_id': 1000 + i, 'category_id': category,
                                'bbox': [x, y, w, h], 'area': w * h, 'iscrowd': 0})
        Image.fromarray(pixels).save(root / split / f'{i:04d}.jpg')
        images.append({'id': 1000 + i, 'file_name': f'{i:04d}.jpg', 'width': width, 'height': height})
    data = {'images': images, 'annotations': annotations + list(extra_annotations),
            'categories': COCO_CATEGORIES, **json_overrides}
    (root / 'annotations').mkdir(exist_ok=True)
    (root / 'annotations' / f'instances_{split}.json').write_text(json.dumps(data))
    return data


@pytest.fixture
def coco_folder(tmp_path) -> Path:
    """A small COCO-2017-layout folder: 8 training and 4 validation images."""
    root = tmp_path / 'coco'
    write_coco(root, 'train2017', 8, seed=0)
    write_coco(root, 'val2017', 4, seed=1)
    return root
