"""Lightning callbacks: TensorBoard images, prediction writers, the latest-state checkpoint."""
from .classification_images import ClassificationImageLogger
from .detection_images import DetectionImageLogger, DetectionPredictionWriter
from .kept_patches import KeptPatchImageLogger
from .last_checkpoint import LastCheckpoint
from .prediction_writer import ClassificationPredictionWriter
from .segmentation_images import SegmentationImageLogger, SegmentationPredictionWriter

__all__ = [
    'ClassificationImageLogger', 'ClassificationPredictionWriter', 'SegmentationImageLogger',
    'SegmentationPredictionWriter', 'DetectionImageLogger', 'DetectionPredictionWriter', 'KeptPatchImageLogger',
    'LastCheckpoint',
]
