"""Whole-image and sliding-window inference for segmentation, with mmsegmentation's semantics."""
from typing import Callable, Tuple

import torch
import torch.nn.functional as F

Predictor = Callable[[torch.Tensor], torch.Tensor]  # images [B, 3, h, w] -> logits [B, K, h, w]


def whole_inference(predict: Predictor, images: torch.Tensor, multiple: int = 1) -> torch.Tensor:
    """Logits for the whole image; pads to a multiple of ``multiple`` (the patch size) and crops back."""
    h, w = images.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h))
    return predict(images)[..., :h, :w]


def slide_inference(
        predict: Predictor, images: torch.Tensor, num_classes: int, crop_size: Tuple[int, int],
        stride: Tuple[int, int], multiple: int = 1,
) -> torch.Tensor:
    """Average of overlapping crop predictions, as mmseg's EncoderDecoder.slide_inference.

    Windows of ``crop_size`` every ``stride`` pixels, the last one flush with the border; a side
    smaller than the crop is predicted whole (padded only up to ``multiple``).
    """
    (h_crop, w_crop), (h_stride, w_stride) = crop_size, stride
    batch, _, h_img, w_img = images.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    logits = images.new_zeros((batch, num_classes, h_img, w_img), dtype=torch.float32)
    count = images.new_zeros((1, 1, h_img, w_img), dtype=torch.float32)
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, h_img)
            x2 = min(w_idx * w_stride + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            crop = whole_inference(predict, images[:, :, y1:y2, x1:x2], multiple)
            logits[:, :, y1:y2, x1:x2] += crop.float()
            count[:, :, y1:y2, x1:x2] += 1
    return logits / count
