"""albumentations pipelines for classification (numpy HWC uint8 in, normalised CHW tensor out)."""
from typing import Sequence

import albumentations as A
from albumentations.pytorch import ToTensorV2


def classification_train_transform(
        image_size: int, mean: Sequence[float], std: Sequence[float], scale=(0.08, 1.0), hflip: float = 0.5,
        color_jitter: float = 0.4, random_erasing: float = 0.25,
) -> A.Compose:
    """Inception-style crop, flip, colour jitter and random erasing, as in the DeiT/ViR recipes."""
    transforms = [A.RandomResizedCrop(size=(image_size, image_size), scale=tuple(scale))]
    if hflip > 0:
        transforms.append(A.HorizontalFlip(p=hflip))
    if color_jitter > 0:
        transforms.append(A.ColorJitter(color_jitter, color_jitter, color_jitter, 0.0, p=0.8))
    transforms += [A.Normalize(mean=mean, std=std)]
    if random_erasing > 0:
        transforms.append(A.Erasing(p=random_erasing))
    transforms.append(ToTensorV2())
    return A.Compose(transforms)


def classification_eval_transform(
        image_size: int, mean: Sequence[float], std: Sequence[float], crop_pct: float = 0.875) -> A.Compose:
    """Resize the short side to image_size / crop_pct, then centre-crop image_size."""
    return A.Compose([
        A.SmallestMaxSize(max_size=round(image_size / crop_pct)),
        A.CenterCrop(image_size, image_size),
        A.Normalize(mean=mean, std=std),
        ToTensorV2(),
    ])
