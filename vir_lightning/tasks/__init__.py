"""Thin LightningModules pairing a backbone with a head."""
from .adaptive_classification import AdaptiveClassificationTask
from .base import VisionTask
from .classification import ClassificationTask
from .detection import DetectionTask
from .segmentation import SegmentationTask

__all__ = ['AdaptiveClassificationTask', 'VisionTask', 'ClassificationTask', 'DetectionTask', 'SegmentationTask']
