"""Thin LightningModules pairing a backbone with a head."""
from .base import VisionTask
from .classification import ClassificationTask

__all__ = ['VisionTask', 'ClassificationTask']
