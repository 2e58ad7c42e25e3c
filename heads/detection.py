"""ViTDet-style simple feature pyramid, so a plain (single-stride) ViR/ViT feeds torchvision detectors.

From the last backbone map (stride p) it builds maps at scales 4, 2, 1 and 0.5 (strides p/4 ...
2p) with deconvolutions / max-pooling, each followed by 1x1 and 3x3 convolutions with
LayerNorm (Li et al., "Exploring Plain Vision Transformer Backbones for Object Detection"),
plus a max-pooled extra level ('pool') as torchvision's FPN gives. torchvision has only the
multi-input FPN, hence this module. The output is the OrderedDict with ``out_channels`` that
torchvision's FasterRCNN / RetinaNet / FCOS expect (keys '0'..'3' and 'pool').
"""
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d


def _rescale(channels: int, scale: float) -> nn.Module:
    if scale == 4:
        return nn.Sequential(
            nn.ConvTranspose2d(channels, channels // 2, 2, stride=2), LayerNorm2d(channels // 2), nn.GELU(),
            nn.ConvTranspose2d(channels // 2, channels // 4, 2, stride=2))
    if scale == 2:
        return nn.ConvTranspose2d(channels, channels // 2, 2, stride=2)
    if scale == 1:
        return nn.Identity()
    if scale == 0.5:
        return nn.MaxPool2d(2, stride=2)
    raise ValueError(f"simple feature pyramid scales must be among 4, 2, 1, 0.5; got {scale}")


def _rescaled_channels(channels: int, scale: float) -> int:
    return {4: channels // 4, 2: channels // 2}.get(scale, channels)


class SimpleFeaturePyramid(nn.Module):
    """Wraps a timm ``features_only`` backbone whose LAST map feeds the pyramid.

    Args:
        backbone: a timm features_only model (its ``feature_info`` gives the channels).
        out_channels: channels of every pyramid level (256 in ViTDet).
        scales: rescale factors of the last map, fine to coarse.
    """

    def __init__(self, backbone: nn.Module, out_channels: int = 256, scales: Sequence[float] = (4, 2, 1, 0.5)):
        super().__init__()
        self.body = backbone
        channels = backbone.feature_info.channels()[-1]
        self.out_channels = out_channels
        self.rescales = nn.ModuleList(_rescale(channels, s) for s in scales)
        self.outputs = nn.ModuleList(nn.Sequential(
            nn.Conv2d(_rescaled_channels(channels, s), out_channels, 1, bias=False), LayerNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels),
        ) for s in scales)

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        last = self.body(images)[-1]
        maps = OrderedDict((str(i), out(rescale(last)))
                           for i, (rescale, out) in enumerate(zip(self.rescales, self.outputs)))
        maps['pool'] = F.max_pool2d(maps[str(len(maps) - 1)], kernel_size=1, stride=2)
        return maps
