"""Task heads: plain nn.Modules that turn backbone features into predictions."""
from typing import Any, Dict, List, Optional

import torch.nn as nn

from .classification import LinearHead, MLPHead
from .detection import DETECTORS, SimpleFeaturePyramid, create_detector
from .segmentation import LinearSegHead, UPerNet

CLASSIFICATION_HEADS = {'linear': LinearHead, 'mlp': MLPHead}
SEGMENTATION_HEADS = {'uper': UPerNet, 'linear': LinearSegHead}

__all__ = [
    'LinearHead', 'MLPHead', 'SimpleFeaturePyramid', 'DETECTORS', 'create_detector', 'LinearSegHead', 'UPerNet', 'CLASSIFICATION_HEADS',
    'SEGMENTATION_HEADS', 'create_classification_head', 'create_segmentation_head',
]


def create_classification_head(
        name: str, in_features: int, num_classes: int, kwargs: Optional[Dict[str, Any]] = None) -> nn.Module:
    if name not in CLASSIFICATION_HEADS:
        raise ValueError(f"unknown classification head {name!r}; choose one of {sorted(CLASSIFICATION_HEADS)}")
    return CLASSIFICATION_HEADS[name](in_features, num_classes, **(kwargs or {}))


def create_segmentation_head(
        name: str, in_channels: List[int], num_classes: int, kwargs: Optional[Dict[str, Any]] = None) -> nn.Module:
    if name not in SEGMENTATION_HEADS:
        raise ValueError(f"unknown segmentation head {name!r}; choose one of {sorted(SEGMENTATION_HEADS)}")
    return SEGMENTATION_HEADS[name](in_channels, num_classes, **(kwargs or {}))
