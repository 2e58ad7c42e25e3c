"""Create a backbone from its timm name, with errors that say what to write instead."""
import inspect
import re
from functools import lru_cache
from typing import Any, Dict, FrozenSet, List, Optional

import timm
import torch.nn as nn
from lightning.pytorch.utilities import rank_zero_warn

from ..errors import UserError

_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")


@lru_cache(maxsize=None)
def family_options() -> FrozenSet[str]:
    """Constructor options of the backbone families the packaged configs set (ViR, QnA-ViT, timm's ViT)."""
    from timm.models.vision_transformer import VisionTransformer

    from ..models import QnAViT, VisionRetentionNetwork
    return frozenset(name for cls in (VisionRetentionNetwork, QnAViT, VisionTransformer)
                     for name in inspect.signature(cls).parameters)


def create_backbone(name: str, kwargs: Optional[Dict[str, Any]] = None, **overrides) -> nn.Module:
    """``timm.create_model(name, **kwargs, **overrides)``; any timm model name works, ViR and QnA-ViT included.

    backbone_kwargs that the model does not take but another family does (a demo's ViR settings under
    ``--model.backbone qna_vit_tiny``) are left out with a warning naming them, so a config's backbone
    can be swapped by one override; any other unknown option is an error.
    """
    kwargs = {**(kwargs or {}), **overrides}
    if not timm.is_model(name):
        ours = ', '.join(timm.list_models('vir_*') + timm.list_models('qna_vit_*'))
        close = timm.list_models(f'*{name.split("_")[0]}*')[:8] if name else []
        hint = f" Similar timm names: {', '.join(close)}." if close else ''
        raise UserError(
            f"unknown backbone {name!r}. This project's backbones: {ours}.{hint} "
            f"Any name from timm.list_models() is accepted (set it with --model.backbone).")
    left_out: List[str] = []
    while True:
        try:
            model = timm.create_model(name, **kwargs)
            break
        except (TypeError, ValueError, AssertionError) as error:  # timm asserts on out-of-range out_indices
            unexpected = _UNEXPECTED.search(str(error))
            option = unexpected.group(1) if unexpected else None
            if option == 'geometry' and kwargs[option] != '1d':  # a change of model, never silently dropped
                raise UserError(f"--model.backbone_kwargs.geometry {kwargs[option]}: {name} has no retention "
                                f"geometry; 2D retention is ViR's (e.g. --model.backbone vir_tiny_patch16_224), or "
                                f"remove the option") from None
            if isinstance(error, TypeError) and option in family_options() and option not in overrides:
                left_out.append(option)
                kwargs.pop(option)
                continue
            shown = {k: v for k, v in kwargs.items() if k not in overrides or k == 'out_indices'}
            raise UserError(f"cannot build backbone {name!r} with {shown}: {error}") from error
    if left_out:
        rank_zero_warn(f"--model.backbone_kwargs {', '.join(left_out)}: options of another backbone family, not of "
                       f"{name}; left out (remove them from the config to silence this)")
    return model


def timm_model(backbone: nn.Module) -> nn.Module:
    """The timm model behind ``backbone`` (timm's features_only wrappers keep it as ``.model``, the AdaViT
    wrapper as ``.backbone``)."""
    from ..models.adavit import AdaptiveVisionTransformer
    if isinstance(backbone, AdaptiveVisionTransformer):
        return backbone.backbone
    return getattr(backbone, 'model', backbone)


def patch_size(backbone: nn.Module) -> int:
    """The side that input sizes must be a multiple of: the patch size of a patch embedding or stem
    (QnA-ViT's 4), else 1; through timm's feature wrappers."""
    model = timm_model(backbone)
    patch_embed = getattr(model, 'patch_embed', None)
    size = patch_embed.patch_size if patch_embed is not None else getattr(model, 'patch_size', 1)
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def pads_inputs(backbone: nn.Module) -> bool:
    """Whether the backbone pads inputs to its patch size itself (timm's ``dynamic_img_pad``)."""
    model = timm_model(backbone)
    own = getattr(model, 'dynamic_img_pad', False)
    return bool(getattr(getattr(model, 'patch_embed', None), 'dynamic_img_pad', own))
