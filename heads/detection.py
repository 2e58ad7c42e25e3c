"""Feature pyramids that feed torchvision's detectors from a timm ``features_only`` backbone.

* ``SimpleFeaturePyramid`` (ViTDet, Li et al., "Exploring Plain Vision Transformer Backbones for
  Object Detection"), for plain backbones (every map at one stride p, as ViR and ViT): from the
  last map it builds maps at scales 4, 2, 1 and 0.5 (strides p/4 ... 2p) with deconvolutions /
  max-pooling, each followed by 1x1 and 3x3 convolutions with LayerNorm. torchvision has only the
  multi-input FPN, hence this module.
* ``HierarchicalFeaturePyramid``, for maps at growing strides (QnA-ViT, Swin, ConvNeXt):
  torchvision's own ``FeaturePyramidNetwork`` over the last four maps.

Both add the max-pooled extra level ('pool', torchvision's ``LastLevelMaxPool``) and return the
OrderedDict with ``out_channels`` that torchvision's FasterRCNN / RetinaNet / FCOS expect (keys
'0'..'3' and 'pool'). ``create_detector`` picks the pyramid from the backbone's strides and puts
one of those detectors on top.
"""
import math
from collections import OrderedDict
from typing import Literal, Optional, Sequence, get_args

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torchvision.ops.poolers import initLevelMapper

from vir_lightning.errors import check_choice

from .feature_strides import has_growing_strides

NUM_LEVELS = 5  # four pyramid scales + the pooled level


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
        patch = backbone.feature_info.reduction()[-1]
        self.strides = [patch / s for s in scales] + [2 * patch / min(scales)]  # the levels' strides, 'pool' last
        self.max_stride = round(self.strides[-1])
        self.out_channels = out_channels
        self.rescales = nn.ModuleList(_rescale(channels, s) for s in scales)
        self.outputs = nn.ModuleList(nn.Sequential(
            nn.Conv2d(_rescaled_channels(channels, s), out_channels, 1, bias=False), LayerNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels),
        ) for s in scales)
        self.extra = LastLevelMaxPool()

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        last = self.body(images)[-1]
        maps = [out(rescale(last)) for rescale, out in zip(self.rescales, self.outputs)]
        names = [str(i) for i in range(len(maps))]
        maps, names = self.extra(maps, [], names)  # appends 'pool', the last level max-pooled with stride 2
        return OrderedDict((name, level.float()) for name, level in zip(names, maps))  # see FullPrecision


class HierarchicalFeaturePyramid(nn.Module):
    """torchvision's FPN (lateral 1x1, top-down sum, 3x3 outputs; pooled extra level) over the last
    ``levels`` maps of a hierarchical timm features_only backbone.

    Its convolutions are followed by LayerNorm, as the simple pyramid's (timm's and QnA-ViT's stage
    outputs are not normalised, and they grow with depth: without it, a from-scratch Faster R-CNN on
    QnA-ViT diverged within 40 steps at the detection demo's learning rate).
    """

    def __init__(self, backbone: nn.Module, out_channels: int = 256, levels: int = NUM_LEVELS - 1):
        super().__init__()
        channels, reductions = backbone.feature_info.channels(), backbone.feature_info.reduction()
        if len(channels) < levels:
            raise ValueError(f"a hierarchical backbone needs {levels} feature maps for the pyramid, got "
                             f"{len(channels)} (strides {reductions}): set out_indices to {levels} stages")
        self.body = backbone
        self.levels = levels
        self.strides = [float(r) for r in reductions[-levels:]] + [2.0 * reductions[-1]]
        self.max_stride = round(self.strides[-1])
        self.out_channels = out_channels
        self.fpn = FeaturePyramidNetwork(channels[-levels:], out_channels, extra_blocks=LastLevelMaxPool(),
                                         norm_layer=LayerNorm2d)

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        maps = self.body(images)[-self.levels:]
        levels = self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))
        return OrderedDict((name, level.float()) for name, level in levels.items())  # see FullPrecision


class FullPrecision(nn.Module):
    """Runs a detector head with autocast off.

    Under bf16 autocast, box regressions and anchors would be bf16, whose spacing is 4 px at
    coordinate 512 and 8 px at 1024: boxes would snap to a coarse grid. The pyramid hands the
    heads float32 maps and the heads (a small share of the compute) stay in float32.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        with torch.autocast('cuda', enabled=False), torch.autocast('cpu', enabled=False):
            return self.module(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:  # detectors also call their head's helpers (e.g. head.compute_loss)
            return getattr(self.module, name)


class PreparedImagesTransform(GeneralizedRCNNTransform):
    """torchvision's detector transform minus resizing and normalisation.

    The DataModule owns resizing (so boxes, crops and evaluation scales are decided in one place)
    and normalises with its own mean/std; this only batches images, zero-padded to a multiple of
    ``size_divisible`` (the pooled level's stride, so every level's anchors align with its pixels),
    and keeps predictions in input coordinates.
    """

    def __init__(self, size_divisible: int):
        super().__init__(min_size=1, max_size=1, image_mean=[0.0], image_std=[1.0], size_divisible=size_divisible)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def resize(self, image, target=None):
        return image, target


DetectorName = Literal['faster_rcnn', 'retinanet', 'fcos']
DETECTORS = {'faster_rcnn': FasterRCNN, 'retinanet': RetinaNet, 'fcos': FCOS}


DETECTIONS_PER_IMAGE = {'faster_rcnn': 'box_detections_per_img', 'retinanet': 'detections_per_img',
                        'fcos': 'detections_per_img'}


def create_detector(
        name: DetectorName, backbone: nn.Module, num_classes: int, pyramid_channels: int = 256,
        anchor_sizes: Optional[Sequence[int]] = None, detections_per_image: int = 100,
        box_head_size: int = 1024, **kwargs) -> nn.Module:
    """A torchvision detector on a feature pyramid over ``backbone`` (a timm features_only model): the
    simple one (ViTDet) when its maps share one stride, torchvision's FPN when they come at growing strides.

    Args:
        name: 'faster_rcnn' (two-stage), 'retinanet' or 'fcos' (single-stage).
        num_classes: object categories; labels run 1..num_classes, 0 is background (torchvision's convention).
        anchor_sizes: one base size per pyramid level, fine to coarse (default: torchvision's, 32..512,
            8..128 for FCOS); aspect ratios 0.5, 1, 2 (RetinaNet: also 3 octave scales per level).
        detections_per_image: most detections kept per image (torchvision's default 100).
        box_head_size: width of Faster R-CNN's two-layer box head (torchvision's TwoMLPHead; 1024 in
            torchvision and ViTDet). On a small pyramid the head's two 1024-wide layers cost more than
            the backbone: the CPU demo uses 256.
        **kwargs: the torchvision detector's own options (box_score_thresh, nms_thresh, ...).
    """
    check_choice('detector', name, get_args(DetectorName))
    if DETECTIONS_PER_IMAGE[name] in kwargs:
        raise ValueError(f"set the detection limit with detections_per_image, not {DETECTIONS_PER_IMAGE[name]} "
                         f"(the mAP evaluation counts the same number)")
    kwargs[DETECTIONS_PER_IMAGE[name]] = detections_per_image
    hierarchical = has_growing_strides(backbone.feature_info.reduction())
    pyramid = (HierarchicalFeaturePyramid if hierarchical else SimpleFeaturePyramid)(backbone, pyramid_channels)
    if anchor_sizes is not None:
        kwargs['anchor_generator'] = _anchor_generator(name, anchor_sizes)
    detector = DETECTORS[name](pyramid, num_classes=num_classes + 1, **kwargs)
    detector.transform = PreparedImagesTransform(size_divisible=pyramid.max_stride)
    if name == 'faster_rcnn':
        _fix_roi_pool_scales(detector.roi_heads.box_roi_pool, pyramid.strides[:-1])
        if box_head_size != detector.roi_heads.box_head.fc7.out_features:
            resolution = detector.roi_heads.box_roi_pool.output_size[0]
            detector.roi_heads.box_head = TwoMLPHead(pyramid_channels * resolution ** 2, box_head_size)
            detector.roi_heads.box_predictor = FastRCNNPredictor(box_head_size, num_classes + 1)
    elif box_head_size != 1024:
        raise ValueError(f"box_head_size is Faster R-CNN's; {name} has no box head to resize")
    for head in ('rpn', 'roi_heads') if name == 'faster_rcnn' else ('head',):
        setattr(detector, head, FullPrecision(getattr(detector, head)))
    return detector


def _fix_roi_pool_scales(pool: MultiScaleRoIAlign, strides: Sequence[float]) -> None:
    """Set the RoI pooler's level scales from the pyramid's known strides.

    Left unset, torchvision infers them once, from the first batch's unpadded image height, and
    caches them: a first batch of short, heavily padded images (e.g. 65 px high padded to 96)
    rounds to the wrong power of two, and every later result depends on which batch came first.
    """
    pool.scales = [1.0 / s for s in strides]
    pool.map_levels = initLevelMapper(round(math.log2(strides[0])), round(math.log2(strides[-1])),
                                      canonical_scale=pool.canonical_scale, canonical_level=pool.canonical_level)


def _anchor_generator(name: str, sizes: Sequence[int]) -> AnchorGenerator:
    if len(sizes) != NUM_LEVELS:
        raise ValueError(f"anchor_sizes needs one size per pyramid level ({NUM_LEVELS}), got {list(sizes)}")
    if name == 'fcos':  # one point per location
        return AnchorGenerator(tuple((s,) for s in sizes), ((1.0,),) * NUM_LEVELS)
    if name == 'retinanet':
        octaves = tuple(tuple(int(s * 2 ** (i / 3)) for i in range(3)) for s in sizes)
        return AnchorGenerator(octaves, ((0.5, 1.0, 2.0),) * NUM_LEVELS)
    return AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * NUM_LEVELS)
