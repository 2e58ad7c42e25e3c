"""Reading images from disk (RGB always, an error that names a broken file), seeded augmentation, predict inputs."""
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from vir_lightning.errors import DataNotFoundError, UserError


IMAGE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError)  # what Pillow raises for a bad file


def load_rgb(path) -> np.ndarray:
    """An HWC uint8 RGB array from any mode Pillow reads: grayscale, palette, CMYK and RGBA are converted,
    16-bit, 32-bit and float images scaled to 8 bits (Pillow's own conversion clips them to 0/255)."""
    try:
        with Image.open(path) as image:
            if image.mode in ('RGB', 'L', 'P', 'RGBA', 'LA', 'PA', 'CMYK', 'YCbCr', 'LAB', 'HSV', '1', 'RGBX', 'La'):
                return np.asarray(image.convert('RGB'))
            gray = to_uint8(np.asarray(image))
    except IMAGE_ERRORS as error:
        raise UserError(
            f"cannot read image '{path}': {error}. The file is corrupt, truncated or not an image: "
            f"replace or delete it (re-extracting the dataset usually fixes this).") from error
    return np.repeat(gray[..., None], 3, axis=2) if gray.ndim == 2 else gray[..., :3]


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Integers scaled from the smallest of 8, 16 or 32 bits that holds their maximum; floats from [0, 1]
    when they fit in it, else from [0, 255]; negative values clipped to 0."""
    if np.issubdtype(array.dtype, np.floating):
        top = 1.0 if array.size and np.nanmax(array) <= 1.0 else 255.0
        scaled = np.nan_to_num(array.astype(np.float64)) / top * 255
    else:
        peak = int(array.max()) if array.size else 0
        bits = next(b for b in (8, 16, 32, 64) if peak < 2 ** b)
        scaled = array.astype(np.float64) / (2 ** bits - 1) * 255
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


class SeededTransform:
    """Seeds the albumentations pipeline from torch's random stream at every call.

    albumentations 2.0 keeps its own generator inside Compose, which forked workers would all copy,
    repeating the same augmentations. Drawing its seed from torch makes each sample's augmentation
    follow the stream that ``SeededSamples`` seeds per training sample (exact resume), and each
    worker's stream elsewhere (which ``seed_everything`` controls).
    """

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, **data):
        self.transform.set_random_seed(int(torch.randint(0, 2 ** 32 - 1, ()).item()))
        return self.transform(**data)


class AlbumentationsTransform:
    """Adapts an albumentations pipeline to datasets that call ``transform(image)``.

    ``pil_transform`` (e.g. timm's RandAugment, which albumentations lacks) runs first, on a PIL image.
    ``fields``: fixed extra inputs the pipeline requires, e.g. empty boxes for a detection pipeline.
    """

    def __init__(self, pipeline, pil_transform=None, fields: Optional[Dict[str, Any]] = None):
        self.pipeline = SeededTransform(pipeline)
        self.pil_transform = pil_transform
        self.fields = fields or {}

    def __call__(self, image: np.ndarray):
        if self.pil_transform is not None:
            image = np.asarray(self.pil_transform(Image.fromarray(image)))
        return self.pipeline(image=image, **self.fields)['image']


def image_files(folder: Path) -> Iterator[Path]:
    """The image files below ``folder``, lazily (``any(image_files(f))`` stops at the first)."""
    return (p for p in Path(folder).rglob('*') if p.suffix.lower() in IMG_EXTENSIONS)


def list_images(folder: Path) -> List[Path]:
    return sorted(image_files(folder))


def unreadable_images(paths: Sequence) -> List[str]:
    """'path: reason' for every file that does not decode completely (threads: decoding releases the GIL),
    with a progress bar: the up-front check of ``--data.verify_images``."""
    from rich.progress import track

    def problem(path) -> Optional[str]:
        try:
            with Image.open(path) as image:
                image.load()
        except IMAGE_ERRORS as error:
            return f'{path}: {error}'
        return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = track(pool.map(problem, paths), total=len(paths), description='verifying images',
                        transient=True)
        return [r for r in results if r is not None]


class ImageFiles(Dataset):
    """Unlabelled image files, for ``predict``; items are (image, info).

    ``info`` holds ``image_id`` (the position in ``paths``), ``orig_size`` (the file's (h, w)),
    ``size`` (the (h, w) after ``transform``), so predictions can be mapped back to the file's pixels,
    and ``readable``: a file that cannot be read is skipped with a warning naming it (the writers leave
    it out) instead of ending the whole run; its place in the batch holds a black image.
    """

    def __init__(self, paths: Sequence[Path], transform: Callable[[np.ndarray], torch.Tensor]):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            array, readable = load_rgb(self.paths[index]), True
        except UserError as error:
            warnings.warn(f"skipped: {error}")
            array, readable = np.zeros((64, 64, 3), np.uint8), False
        image = self.transform(array)
        return image, {'image_id': torch.tensor(index), 'orig_size': torch.tensor(array.shape[:2]),
                       'size': torch.tensor(image.shape[-2:]), 'readable': torch.tensor(readable)}

    @property
    def sample_names(self) -> List[str]:
        return [str(p) for p in self.paths]


def predict_paths(location: Path, option: str) -> List[Path]:
    """The images of a folder (recursively) or a single image file; an error naming ``option`` when there are none."""
    location = Path(location)
    if location.is_file():
        return [location]
    if not location.is_dir():
        raise DataNotFoundError(f"{option} '{location}' is neither a folder nor an image file")
    paths = list_images(location)
    if not paths:
        raise UserError(f"no images found under {option} '{location}' (looked for {', '.join(IMG_EXTENSIONS)})")
    return paths
