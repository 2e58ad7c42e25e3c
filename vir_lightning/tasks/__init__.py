"""Thin LightningModules pairing a backbone with a head."""
from .adaptive_classification import AdaptiveClassificationTask
from .adaptive_segmentation import AdaptiveSegmentationTask
from .base import VisionTask
from .classification import ClassificationTask
from .detection import DetectionTask
from .segmentation import SegmentationTask

__all__ = ['AdaptiveClassificationTask', 'AdaptiveSegmentationTask', 'VisionTask', 'ClassificationTask',
           'DetectionTask', 'SegmentationTask']
