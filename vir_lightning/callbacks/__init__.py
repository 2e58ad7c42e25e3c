"""Lightning callbacks: TensorBoard images and prediction writers."""
from .classification_images import ClassificationImageLogger
from .prediction_writer import ClassificationPredictionWriter

__all__ = ['ClassificationImageLogger', 'ClassificationPredictionWriter']
