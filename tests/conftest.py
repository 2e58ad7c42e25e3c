import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')

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
