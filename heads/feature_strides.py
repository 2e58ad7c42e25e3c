"""Which kind of feature maps a timm ``features_only`` backbone gives: the dense heads pick their neck
(segmentation) or pyramid (detection) from it."""
from typing import Sequence


def has_growing_strides(reductions: Sequence[float]) -> bool:
    """Whether a backbone's maps come at growing strides (hierarchical: QnA-ViT, Swin, ConvNeXt), not all
    at one stride (plain: ViT, ViR)."""
    return len(set(reductions)) > 1
