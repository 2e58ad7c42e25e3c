"""Classification augmentation: albumentations pipelines (numpy HWC uint8 in, normalised CHW tensor out)
and timm's RandAugment, made safe for every policy string."""
from typing import Sequence

import albumentations as A
from albumentations.pytorch import ToTensorV2
from PIL import Image
from timm.data.auto_augment import RandAugment, posterize, rand_augment_transform

from vir_lightning.errors import UserError

RAND_AUGMENT_FILL = (124, 116, 104)  # timm's mean-colour fill for geometric ops


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


def posterize_any_bits(image: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize for any bit count: keeping 0 (or fewer) bits gives black, as Pillow did before 13.

    timm maps the top magnitude of 'PosterizeIncreasing' (and the lowest of 'Posterize') to 0 bits;
    Pillow 13 rejects 0, so a run with e.g. 'rand-m9-mstd0.5-inc1', whose sampled magnitude reaches
    10 now and then, died within the first thousands of images.
    """
    if bits_to_keep <= 0:
        return image.point(lambda _: 0)
    return posterize(image, bits_to_keep, **kwargs)


def build_rand_augment(policy: str) -> RandAugment:
    """timm's RandAugment for a policy string ('rand-m9-mstd0.5-inc1', ...), safe at every sampled magnitude."""
    try:
        if not policy.startswith('rand'):
            raise AssertionError
        transform = rand_augment_transform(policy, {'img_mean': RAND_AUGMENT_FILL})
    except (AssertionError, ValueError) as error:
        raise UserError(
            f"--data.rand_augment {policy!r} is not a timm RandAugment policy: write 'rand' followed by "
            f"'-'-separated options m<magnitude>, n<ops>, mstd<std>, mmax<max>, inc<0|1>, p<prob>, "
            f"e.g. 'rand-m9-mstd0.5-inc1'") from error
    for op in transform.ops:
        if op.aug_fn is posterize:
            op.aug_fn = posterize_any_bits
    return transform
