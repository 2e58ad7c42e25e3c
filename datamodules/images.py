"""Reading images from disk: RGB always, and an error that names the file when one is broken."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import get_worker_info
from torchvision.datasets.folder import IMG_EXTENSIONS

from vir_lightning.errors import UserError


def load_rgb(path) -> np.ndarray:
    """An HWC uint8 RGB array; grayscale, palette, CMYK and RGBA images are converted."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert('RGB'))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise UserError(
            f"cannot read image '{path}': {error}. The file is corrupt, truncated or not an image: "
            f"replace or delete it (re-extracting the dataset usually fixes this).") from error


class SeededTransform:
    """Gives each process / DataLoader worker its own albumentations random stream.

    albumentations 2.0 keeps its own generator inside Compose, which forked workers would all
    copy, repeating the same augmentations; reseeding from torch's per-worker seed (which
    ``seed_everything`` controls) makes the streams distinct and reproducible.
    """

    def __init__(self, transform):
        self.transform = transform
        self._seeded_for = None

    def __call__(self, **data):
        info = get_worker_info()
        worker = info.id if info is not None else -1
        if self._seeded_for != worker:
            seed = info.seed if info is not None else int(torch.randint(0, 2 ** 31 - 1, ()).item())
            self.transform.set_random_seed(seed % 2 ** 32)
            self._seeded_for = worker
        return self.transform(**data)


class AlbumentationsTransform:
    """Adapts an albumentations pipeline to datasets that call ``transform(image)``.

    ``pil_transform`` (e.g. timm's RandAugment, which albumentations lacks) runs first, on a PIL image.
    """

    def __init__(self, pipeline, pil_transform=None):
        self.pipeline = SeededTransform(pipeline)
        self.pil_transform = pil_transform

    def __call__(self, image: np.ndarray):
        if self.pil_transform is not None:
            image = np.asarray(self.pil_transform(Image.fromarray(image)))
        return self.pipeline(image=image)['image']


def list_images(folder: Path) -> list:
    return sorted(p for p in Path(folder).rglob('*') if p.suffix.lower() in IMG_EXTENSIONS)
