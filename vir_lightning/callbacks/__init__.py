"""Lightning callbacks: TensorBoard images and prediction writers."""
from .classification_images import ClassificationImageLogger
from .detection_images import DetectionImageLogger, DetectionPredictionWriter
from .prediction_writer import ClassificationPredictionWriter
from .segmentation_images import SegmentationImageLogger, SegmentationPredictionWriter

__all__ = [
    'ClassificationImageLogger', 'ClassificationPredictionWriter', 'SegmentationImageLogger',
    'SegmentationPredictionWriter', 'DetectionImageLogger', 'DetectionPredictionWriter',
]
