"""Thin LightningModules pairing a backbone with a head."""
from .base import VisionTask
from .classification import ClassificationTask
from .detection import DetectionTask
from .segmentation import SegmentationTask

__all__ = ['VisionTask', 'ClassificationTask', 'DetectionTask', 'SegmentationTask']
