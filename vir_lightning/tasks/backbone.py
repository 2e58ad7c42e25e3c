"""Create a backbone from its timm name, with errors that say what to write instead."""
from typing import Any, Dict, Optional

import timm
import torch.nn as nn

from ..errors import UserError


def create_backbone(name: str, kwargs: Optional[Dict[str, Any]] = None, **overrides) -> nn.Module:
    """``timm.create_model(name, **kwargs, **overrides)``; any timm model name works, ViR ones included."""
    kwargs = {**(kwargs or {}), **overrides}
    if not timm.is_model(name):
        vir_names = ', '.join(timm.list_models('vir_*'))
        close = timm.list_models(f'*{name.split("_")[0]}*')[:8] if name else []
        hint = f" Similar timm names: {', '.join(close)}." if close else ''
        raise UserError(
            f"unknown backbone {name!r}. ViR backbones: {vir_names}.{hint} "
            f"Any name from timm.list_models() is accepted (set it with --model.backbone).")
    try:
        return timm.create_model(name, **kwargs)
    except (TypeError, ValueError) as error:
        raise UserError(f"cannot build backbone {name!r} with backbone_kwargs {kwargs}: {error}") from error


def timm_model(backbone: nn.Module) -> nn.Module:
    """The timm model behind ``backbone`` (timm's features_only wrappers keep it as ``.model``)."""
    return getattr(backbone, 'model', backbone)


def patch_size(backbone: nn.Module) -> int:
    """The backbone's patch size (1 for backbones without a patch embedding), through timm's feature wrappers."""
    patch_embed = getattr(timm_model(backbone), 'patch_embed', None)
    return patch_embed.patch_size[0] if patch_embed is not None else 1
