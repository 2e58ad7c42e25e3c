"""Semantic-segmentation heads over a list of backbone feature maps [B, C_i, H/p, W/p].

``UPerNet`` is mmsegmentation's UPerNet built from mmseg's own classes (MultiLevelNeck for plain
backbones, UPerHead, FCNHead); ``LinearSegHead`` is the light alternative (BatchNorm + 1x1 conv on the
concatenated, upsampled maps). Both return ``(logits, aux_logits or None)`` at 1/4 (UPerNet)
or 1/p (linear) of the input resolution; the task upsamples and computes the losses.
"""
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

from vir_lightning.errors import check_choice

from .feature_strides import has_growing_strides

SegmentationHeadName = Literal['uper', 'linear']


def _mmseg_loss_cfg() -> dict:
    # mmseg heads insist on a loss config; the task computes the losses itself
    return dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)


class UPerNet(nn.Module):
    """mmseg's UPerHead + auxiliary FCNHead, behind a MultiLevelNeck for plain backbones.

    A plain backbone (every map at one stride, as a ViT or ViR) gets mmseg's ViT recipe: the neck
    rescales its maps to strides 4, 8, 16, 32. Maps already at growing strides (Swin, ConvNeXt,
    QnA-ViT) go straight into the UPerHead, as mmseg's Swin and ConvNeXt recipes.

    Args:
        in_channels: channels of each backbone feature map.
        num_classes: output classes.
        strides: each map's stride (``feature_info.reduction()``); None: one stride (plain).
        neck_channels: channels after the neck (mmseg ViT recipe: the backbone width); plain only.
        channels: UPerHead channels (512 in the recipes); aux_channels: FCNHead channels (256).
        scales: neck rescale factors per map; plain only.
        aux_index: which map feeds the auxiliary head: 'auto' is the recipes' (3 after the neck,
            2 of a hierarchical backbone); None: no auxiliary head.
    """

    def __init__(
            self,
            in_channels: Sequence[int],
            num_classes: int,
            strides: Optional[Sequence[int]] = None,
            neck_channels: Optional[int] = None,
            channels: int = 512,
            aux_channels: int = 256,
            scales: Optional[Sequence[float]] = None,
            aux_index: Union[int, Literal['auto'], None] = 'auto',
            dropout: float = 0.1,
    ):
        super().__init__()
        from vir_lightning.mmseg import FCNHead, MultiLevelNeck, UPerHead  # mmseg loads only for this head

        in_channels = list(in_channels)
        norm_cfg = dict(type='BN', requires_grad=True)  # Lightning's sync_batchnorm makes it SyncBN under DDP
        plain = strides is None or not has_growing_strides(strides)
        if plain:
            neck_channels = neck_channels or in_channels[-1]
            scales = list(scales or (4, 2, 1, 0.5))
            self.neck = MultiLevelNeck(in_channels=in_channels, out_channels=neck_channels, scales=scales)
            in_channels = [neck_channels] * len(scales)
        else:
            ignored = [name for name, value in (('neck_channels', neck_channels), ('scales', scales)) if value]
            if ignored:
                rank_zero_warn(f"head_kwargs {', '.join(ignored)}: the backbone's maps come at strides "
                               f"{list(strides)}, so UPerNet has no neck and ignores them")
            self.neck = nn.Identity()
        if aux_index == 'auto':
            aux_index = 3 if plain else 2
        levels = len(in_channels)
        if aux_index is not None and not -levels <= aux_index < levels:
            raise ValueError(f"aux_index {aux_index} is outside the head's {levels} maps")
        self.decode_head = UPerHead(
            in_channels=in_channels, in_index=list(range(levels)), pool_scales=(1, 2, 3, 6),
            channels=channels, dropout_ratio=dropout, num_classes=num_classes, norm_cfg=norm_cfg,
            align_corners=False, loss_decode=_mmseg_loss_cfg())
        self.aux_head = None if aux_index is None else FCNHead(
            in_channels=in_channels[aux_index], in_index=aux_index, channels=aux_channels, num_convs=1,
            concat_input=False, dropout_ratio=dropout, num_classes=num_classes, norm_cfg=norm_cfg,
            align_corners=False, loss_decode=_mmseg_loss_cfg())

    def forward(self, features: List[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        features = self.neck(list(features))  # nn.Identity passes the list through
        logits = self.decode_head(features)
        aux = self.aux_head(features) if self.aux_head is not None and self.training else None
        return logits, aux


class LinearSegHead(nn.Module):
    """Upsample every map to the first one's size, concatenate, BatchNorm, 1x1 conv to classes."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, dropout: float = 0.1):
        super().__init__()
        total = sum(in_channels)
        self.norm = nn.BatchNorm2d(total)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(total, num_classes, kernel_size=1)

    def forward(self, features: List[torch.Tensor]) -> Tuple[torch.Tensor, None]:
        size = features[0].shape[-2:]
        x = torch.cat([f if f.shape[-2:] == size else F.interpolate(f, size=size, mode='bilinear', align_corners=False)
                       for f in features], dim=1)
        return self.classifier(self.dropout(self.norm(x))), None


def create_segmentation_head(name: SegmentationHeadName, in_channels: List[int], num_classes: int,
                             kwargs: Optional[Dict[str, Any]] = None,
                             strides: Optional[Sequence[int]] = None) -> nn.Module:
    """'uper' (UPerNet, told the maps' ``strides``) or 'linear' (LinearSegHead) with its constructor's ``kwargs``."""
    check_choice('segmentation head', name, get_args(SegmentationHeadName))
    if name == 'uper':
        return UPerNet(in_channels, num_classes, strides=strides, **(kwargs or {}))
    return LinearSegHead(in_channels, num_classes, **(kwargs or {}))
