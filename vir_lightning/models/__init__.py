"""Backbones as timm models: importing this package registers them (``timm.create_model('vir_base_patch16_224')``,
``timm.create_model('qna_vit_tiny')``); ``AdaptiveVisionTransformer`` (AdaViT) wraps a ViR or timm ViT."""
from .retention import (
    DECAY_SCHEDULES, DIRECTIONS, KERNELS, RETENTION_MODES, DecaySchedule, Direction, Kernel, RetentionMode,
    check_retention, decay_schedule, retention,
)
from .qna import QNA_MODES, QnA, QnAMode
from .qna_vit import QnABlock, QnAViT, WindowAttentionBlock
from .vir import Retention, RetentionBlock, VisionRetentionNetwork, checkpoint_filter_fn
from .adavit import ADAPTABLE, Adaptable, AdaptiveVisionTransformer, Decisions, usage_loss

__all__ = [
    'DECAY_SCHEDULES', 'DIRECTIONS', 'KERNELS', 'RETENTION_MODES', 'DecaySchedule', 'Direction', 'Kernel',
    'RetentionMode', 'check_retention', 'decay_schedule', 'retention',
    'Retention', 'RetentionBlock', 'VisionRetentionNetwork', 'checkpoint_filter_fn',
    'QNA_MODES', 'QnA', 'QnAMode', 'QnABlock', 'QnAViT', 'WindowAttentionBlock',
    'ADAPTABLE', 'Adaptable', 'AdaptiveVisionTransformer', 'Decisions', 'usage_loss',
]
