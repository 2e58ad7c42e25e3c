"""vir_lightning: Vision Retention Networks for dense vision, on timm and PyTorch Lightning.

Importing the package registers the ViR models in timm (``timm.create_model('vir_base_patch16_224')``).
mmsegmentation is reached through ``vir_lightning.mmseg`` (which makes it work on mmcv-lite and puts
the backbones in its registry), imported only by what needs it.
"""
from .models import (
    DECAY_SCHEDULES, DIRECTIONS, RETENTION_MODES, Retention, RetentionBlock, VisionRetentionNetwork,
    checkpoint_filter_fn, decay_schedule, retention,
)

__all__ = [
    'DECAY_SCHEDULES', 'DIRECTIONS', 'RETENTION_MODES', 'decay_schedule', 'retention',
    'Retention', 'RetentionBlock', 'VisionRetentionNetwork', 'checkpoint_filter_fn',
]
__version__ = '0.1.0'
