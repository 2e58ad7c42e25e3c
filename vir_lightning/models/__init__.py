"""Backbones as timm models: importing this package registers them (``timm.create_model('vir_base_patch16_224')``)."""
from .retention import (
    DECAY_SCHEDULES, DIRECTIONS, KERNELS, RETENTION_MODES, DecaySchedule, Direction, Kernel, RetentionMode,
    check_retention, decay_schedule, retention,
)
from .vir import Retention, RetentionBlock, VisionRetentionNetwork, checkpoint_filter_fn

__all__ = [
    'DECAY_SCHEDULES', 'DIRECTIONS', 'KERNELS', 'RETENTION_MODES', 'DecaySchedule', 'Direction', 'Kernel',
    'RetentionMode', 'check_retention', 'decay_schedule', 'retention',
    'Retention', 'RetentionBlock', 'VisionRetentionNetwork', 'checkpoint_filter_fn',
]
