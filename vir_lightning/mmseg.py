"""mmsegmentation integration: mmseg 1.2 on mmcv-lite, and the project's backbones in mmseg's registry.

The only module of the project that imports mmseg; everything else reaches mmseg through it, so the
compatibility below is applied in exactly one place, and only by the commands that need mmseg.
Import it before using mmseg yourself (mmseg configs: ``custom_imports=dict(imports=['vir_lightning.mmseg'])``)::

    backbone=dict(type='ViR', model_name='vir_base_patch16_224', out_indices=(3, 5, 7, 11),
                  model_kwargs=dict(retention_mode='chunkwise', img_size=512))
    backbone=dict(type='QnAViT', model_name='qna_vit_tiny')  # four stages, no neck needed

Why a compatibility layer: mmcv-lite (pure Python, no compiled ops) ships the ``mmcv/ops`` package
but not its compiled extension, so ``import mmcv.ops`` fails, and four mmseg modules import from it
without a guard: ``point_sample`` in utils/mask_classification.py, models/utils/point_sample.py and
decode_heads/san_head.py, and ``sigmoid_focal_loss`` in models/losses/focal_loss.py; ``import
mmseg.models`` then fails. When, and only when, ``mmcv.ops`` cannot be imported, a stand-in
``mmcv.ops`` module is installed:

* ``point_sample``: mmcv's own pure-PyTorch implementation, loaded from its file;
* ``sigmoid_focal_loss``: raises a clear error when called (it needs compiled mmcv);
* any other name raises ModuleNotFoundError, which mmseg's guarded imports (``try: from mmcv.ops
  import X except ModuleNotFoundError``) already handle.

With a full mmcv installed it does nothing. UPerHead, FCNHead, MultiLevelNeck, the losses used
here and the ADE20K metadata are pure Python and work unchanged.
"""
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import timm
import torch.nn as nn

_STAND_IN = 'vir_lightning.mmseg'


def _mmcv_ops_importable() -> bool:
    try:
        import mmcv.ops  # noqa: F401
    except ModuleNotFoundError as error:
        if not (error.name or '').startswith('mmcv'):
            raise
        sys.modules.pop('mmcv.ops', None)  # drop the half-imported package
        return False
    return True


def _load_point_sample(mmcv_dir: Path):
    spec = importlib.util.spec_from_file_location('_mmcv_point_sample', mmcv_dir / 'ops' / 'point_sample.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.point_sample


def _sigmoid_focal_loss(*args, **kwargs):
    raise RuntimeError(
        "mmseg's FocalLoss(use_sigmoid=True) needs mmcv's compiled ops, which mmcv-lite lacks: "
        "use CrossEntropyLoss, or install the full mmcv (`mim install mmcv`)")


def _missing(name: str):
    if name.startswith('__'):
        raise AttributeError(name)
    raise ModuleNotFoundError(f"mmcv.ops.{name} needs mmcv's compiled ops (mmcv-lite has none)", name='mmcv._ext')


def ensure_mmseg_importable() -> None:
    """Install the stand-in ``mmcv.ops`` if the real one cannot load; idempotent."""
    if importlib.util.find_spec('mmcv') is None:
        return  # no mmcv at all: nothing to patch (mmseg itself will say what is missing)
    existing = sys.modules.get('mmcv.ops')
    if existing is not None and getattr(existing, '__origin__', None) == _STAND_IN:
        return
    if _mmcv_ops_importable():
        return
    import mmcv

    ops = types.ModuleType('mmcv.ops', 'Stand-in for the compiled ops that mmcv-lite lacks (see vir_lightning.mmseg).')
    ops.__origin__ = _STAND_IN
    ops.point_sample = _load_point_sample(Path(mmcv.__file__).parent)
    ops.sigmoid_focal_loss = _sigmoid_focal_loss
    ops.__getattr__ = _missing
    sys.modules['mmcv.ops'] = ops
    mmcv.ops = ops


ensure_mmseg_importable()  # before the first import of mmseg below
from mmseg.datasets import ADE20KDataset  # noqa: E402
from mmseg.models.decode_heads import FCNHead, UPerHead  # noqa: E402
from mmseg.models.necks import MultiLevelNeck  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

__all__ = ['ensure_mmseg_importable', 'ade20k_metainfo', 'FCNHead', 'UPerHead', 'MultiLevelNeck', 'TimmFeatures',
           'ViR', 'QnAViT']


def ade20k_metainfo() -> Tuple[Tuple[str, ...], Tuple[Tuple[int, int, int], ...]]:
    """ADE20K's 150 class names and palette, from mmseg's ADE20KDataset.METAINFO."""
    meta = ADE20KDataset.METAINFO
    return tuple(meta['classes']), tuple(tuple(int(v) for v in color) for color in meta['palette'])


@MODELS.register_module()
class TimmFeatures(nn.Module):
    """``timm.create_model(model_name, features_only=True, out_indices=...)`` returning a tuple of NCHW maps.

    ``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` (mmseg's way to start from weights) has timm
    load PATH, e.g. the .safetensors of ``python -m vir_lightning export``; any other init_cfg is an
    error rather than silently ignored.
    """

    def __init__(self, model_name: str = 'vir_base_patch16_224', out_indices: Sequence[int] = (3, 5, 7, 11),
                 model_kwargs: Optional[Dict[str, Any]] = None, init_cfg=None):
        super().__init__()
        model_kwargs = dict(model_kwargs or {})
        if init_cfg is not None:
            if init_cfg.get('type') != 'Pretrained' or not init_cfg.get('checkpoint'):
                raise ValueError(f"{type(self).__name__} init_cfg {dict(init_cfg)}: only "
                                 f"dict(type='Pretrained', checkpoint=PATH) is supported")
            model_kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(init_cfg['checkpoint'])))
        self.model = timm.create_model(model_name, features_only=True, out_indices=tuple(out_indices), **model_kwargs)
        self.out_channels = self.model.feature_info.channels()

    def init_weights(self) -> None:
        """mmseg calls this after building; timm has already initialised (or loaded) the weights."""

    def forward(self, x):
        return tuple(self.model(x))


@MODELS.register_module()
class ViR(TimmFeatures):
    """``backbone=dict(type='ViR', model_name='vir_base_patch16_224', ...)``: TimmFeatures with a ViR default."""


@MODELS.register_module()
class QnAViT(TimmFeatures):
    """``backbone=dict(type='QnAViT', model_name='qna_vit_tiny')``: its four stages (strides 4-32), for
    a UPerHead without neck, as mmseg's Swin recipes."""

    def __init__(self, model_name: str = 'qna_vit_tiny', out_indices: Sequence[int] = (0, 1, 2, 3),
                 model_kwargs: Optional[Dict[str, Any]] = None, init_cfg=None):
        super().__init__(model_name, out_indices, model_kwargs, init_cfg)
