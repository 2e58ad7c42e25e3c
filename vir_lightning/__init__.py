"""vir_lightning: Vision Retention Networks for dense vision, on timm and PyTorch Lightning.

Importing the package registers the ViR models in timm (``timm.create_model('vir_base_patch16_224')``)
and makes mmsegmentation importable on mmcv-lite (see ``mmseg_compat``).
"""
from .mmseg_compat import ensure_mmseg_importable
from .retention import DECAY_SCHEDULES, DIRECTIONS, RETENTION_MODES, decay_schedule, retention
from .vir import Retention, RetentionBlock, VisionRetentionNetwork, checkpoint_filter_fn

__all__ = [
    'DECAY_SCHEDULES', 'DIRECTIONS', 'RETENTION_MODES', 'decay_schedule', 'retention',
    'Retention', 'RetentionBlock', 'VisionRetentionNetwork', 'checkpoint_filter_fn',
]
__version__ = '0.1.0'

ensure_mmseg_importable()  # before anything imports mmseg: mmseg 1.2 needs it on mmcv-lite
