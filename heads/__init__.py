"""Task heads: plain nn.Modules that turn backbone features into predictions.

mmsegmentation (behind ``UPerNet``) is imported only when a UPerNet is built.
"""
from .classification import ClassificationHeadName, mlp_head
from .detection import DetectorName, SimpleFeaturePyramid, create_detector
from .segmentation import LinearSegHead, SegmentationHeadName, UPerNet, create_segmentation_head

__all__ = [
    'ClassificationHeadName', 'mlp_head', 'DetectorName', 'SimpleFeaturePyramid', 'create_detector',
    'LinearSegHead', 'SegmentationHeadName', 'UPerNet', 'create_segmentation_head',
]
