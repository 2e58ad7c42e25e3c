"""Pictures of predictions: images back to uint8, class colours, mask overlays, captioned boxes.

Resizing is torchvision's (``transforms.v2.functional``), drawing is ``torchvision.utils``.
"""
from typing import Sequence, Tuple

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

Color = Tuple[int, int, int]


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo Normalize: uint8 images [B, 3, H, W] on the CPU."""
    mean = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return ((images.float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def resize_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """uint8 [3, H, W] resized (antialiased bilinear) to ``size`` (h, w)."""
    return image if tuple(image.shape[-2:]) == tuple(size) else TF.resize_image(image, list(size), antialias=True)


def resize_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A class map [H, W] resized (nearest, labels never blended) to ``size`` (h, w)."""
    return labels if tuple(labels.shape[-2:]) == tuple(size) else TF.resize_mask(labels[None], list(size))[0]


def fit_within(image: torch.Tensor, longest: int) -> torch.Tensor:
    """uint8 [3, H, W] scaled down so that its longest side is at most ``longest``."""
    scale = longest / max(image.shape[-2:])
    return image if scale >= 1 else resize_image(image, [max(1, round(s * scale)) for s in image.shape[-2:]])


def colorize(labels: torch.Tensor, palette: Sequence[Color], ignore_index: int = 255) -> torch.Tensor:
    """[H, W] class indices -> [3, H, W] uint8 colours (ignored pixels black)."""
    table = torch.zeros((256, 3), dtype=torch.uint8)
    table[:len(palette)] = torch.tensor(palette, dtype=torch.uint8)
    table[ignore_index] = 0
    return table[labels.long().clamp(0, 255).cpu()].permute(2, 0, 1)


def overlay(image: torch.Tensor, labels: torch.Tensor, palette: Sequence[Color], num_classes: int,
            alpha: float = 0.5) -> torch.Tensor:
    """uint8 image [3, H, W] with the classes of ``labels`` blended in (ignored pixels left as they are)."""
    present = [c for c in labels.unique().tolist() if c < num_classes]
    if not present:
        return image
    masks = torch.stack([labels == c for c in present]).cpu()
    return draw_segmentation_masks(image.cpu(), masks, alpha=alpha, colors=[tuple(palette[c]) for c in present])


def draw_boxes(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, names: Sequence[str], color: Color,
               scores: torch.Tensor = None) -> torch.Tensor:
    """uint8 [3, H, W] with boxes outlined and captioned by class name (labels 1..K) and score."""
    if not len(boxes):
        return image
    captions = [names[int(label) - 1] + (f' {float(s):.2f}' if scores is not None else '')
                for label, s in zip(labels, scores if scores is not None else labels)]
    width = max(1, round(max(image.shape[-2:]) / 500))
    return draw_bounding_boxes(image, boxes.float().cpu(), labels=captions, colors=color, width=width)
