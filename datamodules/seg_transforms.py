"""albumentations pipelines for semantic segmentation: the mmsegmentation ADE20K recipe.

Inputs: an HWC uint8 RGB image and an HW uint8 mask of class indices, 255 = ignore.
Outputs: a normalised CHW float tensor and an HW uint8 mask tensor (datasets cast it to long).

Training (mmseg ``configs/_base_/datasets/ade20k.py``, step by step):

==============================================================  ===============================================
mmseg                                                           here
==============================================================  ===============================================
RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0),         ``KeepRatioResize`` (custom, see its docstring)
keep_ratio=True)
RandomCrop(crop_size, cat_max_ratio=0.75)                       ``CatMaxRatioRandomCrop`` (A.RandomCrop + retry)
RandomFlip(prob=0.5)                                            A.HorizontalFlip
PhotoMetricDistortion                                           ``photometric_distortion()`` (albumentations)
SegDataPreProcessor: normalise, then pad to the crop with       A.Normalize, then A.PadIfNeeded(top_left,
image 0 and mask 255 (bottom/right)                             fill=0, fill_mask=255)
==============================================================  ===============================================

Padding comes after normalisation, as in mmseg, so padded pixels are 0 in normalised units (the
mean colour) and never take part in the brightness/contrast jitter; the padded mask is 255, so
a crop larger than the image adds only ignored pixels.

Evaluation: ``KeepRatioResize`` to fit (4 * crop, crop), i.e. mmseg's test ``Resize(scale=(2048, 512),
keep_ratio=True)`` for crop 512 (short side = crop unless the long side would exceed 4 * crop); the
mask is resized with nearest neighbour so it stays aligned with the image.
"""
from typing import Any, Optional, Sequence, Tuple, Union

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.geometric import functional as fgeometric
from albumentations.pytorch import ToTensorV2

IGNORE_INDEX = 255

Size = Union[int, Tuple[int, int]]


def _pair(size: Size) -> Tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def default_scale(crop_size: Size) -> Tuple[int, int]:
    """mmseg's (long, short) resize target for a crop: (2048, 512) for 512, i.e. (4 * crop, crop)."""
    height, width = _pair(crop_size)
    short = min(height, width)
    return 4 * short, short


def rescale_size(height: int, width: int, scale: Sequence[float]) -> Tuple[int, int]:
    """mmcv.rescale_size: the (h, w) that fits (long, short) = scale, keeping the aspect ratio.

    The factor is min(long_target / long_side, short_target / short_side); sides round half up.
    """
    long_target, short_target = max(scale), min(scale)
    factor = min(long_target / max(height, width), short_target / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


class KeepRatioResize(A.DualTransform):
    """Rescale to fit ``scale * ratio`` keeping the aspect ratio; ratio ~ U(ratio_range).

    Custom because albumentations has no equivalent: A.RandomScale draws a factor relative to the
    current size, and A.LongestMaxSize / A.SmallestMaxSize each pin one side, whereas mmseg's
    RandomResize(scale, ratio_range, keep_ratio=True) fits the image inside a (long, short) box
    whose size is random, so the result depends on both sides. With ratio_range=(1, 1) this is
    mmseg's deterministic test-time Resize(scale, keep_ratio=True).

    The image uses bilinear interpolation, the mask nearest neighbour (labels are never blended).
    """

    def __init__(
            self,
            scale: Tuple[int, int],
            ratio_range: Tuple[float, float] = (1.0, 1.0),
            interpolation: int = cv2.INTER_LINEAR,
            p: float = 1.0,
    ):
        super().__init__(p=p)
        if len(scale) != 2 or min(scale) < 1:
            raise ValueError(f"scale must be two positive sides (long, short), got {scale}")
        if not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f"ratio_range must be (low, high) with 0 < low <= high, got {ratio_range}")
        self.scale = (int(scale[0]), int(scale[1]))
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.interpolation = interpolation

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        height, width = params['shape'][:2]
        low, high = self.ratio_range
        ratio = self.py_random.uniform(low, high) if high > low else low
        scale = int(self.scale[0] * ratio), int(self.scale[1] * ratio)  # as mmcv's RandomResize
        return {'target_shape': rescale_size(height, width, scale)}

    def apply(self, img: np.ndarray, target_shape: Tuple[int, int] = None, **params: Any) -> np.ndarray:
        return fgeometric.resize(img, target_shape, interpolation=self.interpolation)

    def apply_to_mask(self, mask: np.ndarray, target_shape: Tuple[int, int] = None, **params: Any) -> np.ndarray:
        return fgeometric.resize(mask, target_shape, interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> Tuple[str, ...]:
        return 'scale', 'ratio_range', 'interpolation'


class CatMaxRatioRandomCrop(A.RandomCrop):
    """mmseg's RandomCrop: a random crop of at most (height, width), re-drawn while one class dominates.

    Custom on top of A.RandomCrop because albumentations has neither part: (1) it crops exactly
    (height, width) and raises on a smaller image (or pads it before the photometric jitter),
    whereas mmseg crops min(crop, image) and pads after normalisation (A.PadIfNeeded does that
    later in the pipeline); (2) it has no cat_max_ratio check. As in mmseg, a crop is accepted when
    it holds at least two classes and none covers ``cat_max_ratio`` or more of its labelled
    (non-ignore) pixels; up to 10 re-draws, after which the last drawn crop is kept.
    cat_max_ratio >= 1 disables the check.
    """

    def __init__(self, height: int, width: int, cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX,
                 max_retries: int = 10, p: float = 1.0):
        super().__init__(height=height, width=width, pad_if_needed=False, p=p)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.max_retries = max_retries

    def _random_box(self, image_height: int, image_width: int) -> Tuple[int, int, int, int]:
        crop_h, crop_w = min(self.height, image_height), min(self.width, image_width)
        y1 = self.py_random.randint(0, image_height - crop_h)
        x1 = self.py_random.randint(0, image_width - crop_w)
        return x1, y1, x1 + crop_w, y1 + crop_h  # albumentations' crop_coords order

    def _acceptable(self, mask: np.ndarray, box: Tuple[int, int, int, int]) -> bool:
        x1, y1, x2, y2 = box
        crop = mask[y1:y2, x1:x2]
        counts = np.bincount(crop.ravel().astype(np.int64, copy=False), minlength=self.ignore_index + 1)
        counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        image_height, image_width = params['shape'][:2]
        box = self._random_box(image_height, image_width)
        mask = data.get('mask')
        if mask is not None and self.cat_max_ratio < 1:
            for _ in range(self.max_retries):
                if self._acceptable(mask, box):
                    break
                box = self._random_box(image_height, image_width)
        return {'crop_coords': box, 'pad_params': None}

    def get_transform_init_args_names(self) -> Tuple[str, ...]:
        return 'height', 'width', 'cat_max_ratio', 'ignore_index', 'max_retries'


def photometric_distortion(brightness_delta: int = 32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                           hue_delta: int = 18) -> A.Sequential:
    """mmseg PhotoMetricDistortion from albumentations parts; each jitter on its own with p=0.5.

    Brightness: +-brightness_delta added (uint8 units); contrast: multiplied by U(contrast_range),
    like mmseg (no mean centring); saturation: U(saturation_range) (albumentations blends with the
    grey image, mmseg scales the HSV S channel: the same direction and range); hue: +-hue_delta in
    OpenCV hue units (0..180), like mmseg. Contrast comes first or last with equal chance, as mmseg's
    random ``mode``.
    """
    def contrast():
        return A.RandomBrightnessContrast(
            brightness_limit=0.0, contrast_limit=(contrast_range[0] - 1, contrast_range[1] - 1), p=0.5)

    def saturation_and_hue():
        return [A.ColorJitter(brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=tuple(saturation_range),
                              hue=(0.0, 0.0), p=0.5),
                A.HueSaturationValue(hue_shift_limit=(-hue_delta, hue_delta), sat_shift_limit=0,
                                     val_shift_limit=0, p=0.5)]

    return A.Sequential([
        A.RandomBrightnessContrast(brightness_limit=(-brightness_delta / 255, brightness_delta / 255),
                                   contrast_limit=0.0, brightness_by_max=True, p=0.5),
        A.OneOf([A.Sequential([contrast(), *saturation_and_hue()]),
                 A.Sequential([*saturation_and_hue(), contrast()])], p=1.0),
    ])


def segmentation_train_transform(
        crop_size: Size, mean: Sequence[float], std: Sequence[float], scale: Optional[Tuple[int, int]] = None,
        ratio_range: Tuple[float, float] = (0.5, 2.0), cat_max_ratio: float = 0.75, hflip: float = 0.5,
        photometric: bool = True, ignore_index: int = IGNORE_INDEX, seed: Optional[int] = None,
) -> A.Compose:
    """The mmseg ADE20K training pipeline (see the module docstring); output is exactly crop_size."""
    crop_h, crop_w = _pair(crop_size)
    transforms = [
        KeepRatioResize(scale or default_scale(crop_size), ratio_range=tuple(ratio_range)),
        CatMaxRatioRandomCrop(crop_h, crop_w, cat_max_ratio=cat_max_ratio, ignore_index=ignore_index),
    ]
    if hflip > 0:
        transforms.append(A.HorizontalFlip(p=hflip))
    if photometric:
        transforms.append(photometric_distortion())
    transforms += [
        A.Normalize(mean=mean, std=std),
        A.PadIfNeeded(min_height=crop_h, min_width=crop_w, position='top_left', border_mode=cv2.BORDER_CONSTANT,
                      fill=0, fill_mask=ignore_index),
        ToTensorV2(),
    ]
    return A.Compose(transforms, seed=seed)


def segmentation_eval_transform(
        crop_size: Size, mean: Sequence[float], std: Sequence[float], scale: Optional[Tuple[int, int]] = None,
) -> A.Compose:
    """Resize to fit (4 * crop, crop) keeping the ratio (mask, if given: nearest), normalise.

    Sizes vary per image; the segmentation task pads to the patch size itself and crops back.
    """
    return A.Compose([KeepRatioResize(scale or default_scale(crop_size)), A.Normalize(mean=mean, std=std),
                      ToTensorV2()])
