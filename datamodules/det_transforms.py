"""albumentations pipelines for detection: images and their boxes transformed together.

Boxes are pascal_voc (x1, y1, x2, y2 in pixels) with ``labels`` and ``iscrowd`` carried along;
boxes cut by a crop keep their visible part, and are dropped below ``min_visibility``.
Resizing lives here, not in the detector, so training crops, evaluation scales and box
coordinates are decided in one place.
"""
from typing import Optional, Sequence, Tuple

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

BOX_FIELDS = ['labels', 'iscrowd']


def _compose(transforms: list, mean: Sequence[float], std: Sequence[float], min_visibility: float = 0.0):
    """``transforms`` then normalisation; without geometric transforms boxes pass through untouched."""
    bbox_params = A.BboxParams(format='pascal_voc', label_fields=BOX_FIELDS, min_visibility=min_visibility,
                               clip=True, filter_invalid_bboxes=True) if transforms else None
    return A.Compose(transforms + [A.Normalize(mean=mean, std=std), ToTensorV2()], bbox_params=bbox_params)


def detection_train_transform(
        image_size: int, mean: Sequence[float], std: Sequence[float], keep_resolution: bool = False,
        large_scale_jitter: bool = False, jitter_scale: Tuple[float, float] = (0.1, 2.0), hflip: float = 0.5,
        vflip: float = 0.0, min_visibility: float = 0.3,
) -> A.Compose:
    """Resize (longest side ``image_size``) or keep the native scale, optional large-scale jitter, flips.

    With ``large_scale_jitter`` (ViTDet/Copy-Paste recipe) the image is rescaled by a random factor in
    ``jitter_scale`` and cropped or padded to a fixed ``image_size`` square. With ``keep_resolution``
    (aerial or high-resolution data) images keep their pixel scale and ``image_size`` crops are taken.
    """
    transforms = [] if keep_resolution else [A.LongestMaxSize(max_size=image_size)]
    if large_scale_jitter:
        low, high = jitter_scale
        transforms.append(A.RandomScale(scale_limit=(low - 1.0, high - 1.0), p=1.0))
    if keep_resolution or large_scale_jitter:
        transforms += [
            A.PadIfNeeded(image_size, image_size, position='top_left', border_mode=cv2.BORDER_CONSTANT, fill=0),
            A.RandomCrop(image_size, image_size),
        ]
    if hflip > 0:
        transforms.append(A.HorizontalFlip(p=hflip))
    if vflip > 0:
        transforms.append(A.VerticalFlip(p=vflip))
    return _compose(transforms, mean, std, min_visibility)


def detection_eval_transform(
        image_size: Optional[int], mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """Longest side resized to ``image_size``; ``None`` keeps the native resolution (whole large images)."""
    return _compose([A.LongestMaxSize(max_size=image_size)] if image_size else [], mean, std)
