"""ViR (or any timm model) as an mmsegmentation backbone, so mmseg configs can name it.

    backbone=dict(type='ViR', model_name='vir_base_patch16_224', out_indices=(3, 5, 7, 11),
                  model_kwargs=dict(retention_mode='chunkwise', img_size=512))
"""
from typing import Any, Dict, Optional, Sequence

import torch.nn as nn
import timm

from .mmseg_compat import ensure_mmseg_importable

ensure_mmseg_importable()
from mmseg.registry import MODELS  # noqa: E402


@MODELS.register_module()
class TimmFeatures(nn.Module):
    """``timm.create_model(model_name, features_only=True, out_indices=...)`` returning a tuple of NCHW maps."""

    def __init__(self, model_name: str = 'vir_base_patch16_224', out_indices: Sequence[int] = (3, 5, 7, 11),
                 model_kwargs: Optional[Dict[str, Any]] = None, init_cfg=None):
        super().__init__()
        import vir_lightning  # noqa: F401  (registers the ViR models in timm)
        self.model = timm.create_model(model_name, features_only=True, out_indices=tuple(out_indices),
                                       **(model_kwargs or {}))
        self.out_channels = self.model.feature_info.channels()

    def init_weights(self) -> None:
        """mmseg calls this after building; timm has already initialised (or loaded) the weights."""

    def forward(self, x):
        return tuple(self.model(x))


@MODELS.register_module()
class ViR(TimmFeatures):
    """``backbone=dict(type='ViR', model_name='vir_base_patch16_224', ...)``: TimmFeatures with a ViR default."""
