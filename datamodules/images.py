"""Reading images from disk: RGB always, and an error that names the file when one is broken."""
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
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


class AlbumentationsTransform:
    """Adapts an albumentations pipeline to datasets that call ``transform(image)``.

    ``pil_transform`` (e.g. timm's RandAugment, which albumentations lacks) runs first, on a PIL image.
    """

    def __init__(self, pipeline, pil_transform=None):
        self.pipeline = pipeline
        self.pil_transform = pil_transform

    def __call__(self, image: np.ndarray):
        if self.pil_transform is not None:
            image = np.asarray(self.pil_transform(Image.fromarray(image)))
        return self.pipeline(image=image)['image']


def list_images(folder: Path) -> list:
    return sorted(p for p in Path(folder).rglob('*') if p.suffix.lower() in IMG_EXTENSIONS)
