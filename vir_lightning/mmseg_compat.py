"""Make mmsegmentation 1.2 importable on mmcv-lite (pure Python, no compiled ops).

mmcv-lite ships the ``mmcv/ops`` package but not its compiled extension, so ``import mmcv.ops``
fails, and four mmseg modules import from it without a guard: ``point_sample`` in
utils/mask_classification.py, models/utils/point_sample.py and decode_heads/san_head.py, and
``sigmoid_focal_loss`` in models/losses/focal_loss.py; ``import mmseg.models`` then fails.

When, and only when, ``mmcv.ops`` cannot be imported, ``ensure_mmseg_importable()`` (run by
``import vir_lightning``, so anything imported after it can use mmseg) installs a stand-in
``mmcv.ops`` module:

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

_STAND_IN = 'vir_lightning.mmseg_compat'


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

    ops = types.ModuleType('mmcv.ops', __doc__)
    ops.__origin__ = _STAND_IN
    ops.point_sample = _load_point_sample(Path(mmcv.__file__).parent)
    ops.sigmoid_focal_loss = _sigmoid_focal_loss
    ops.__getattr__ = _missing
    sys.modules['mmcv.ops'] = ops
    mmcv.ops = ops
