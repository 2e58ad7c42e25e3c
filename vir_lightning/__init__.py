"""vir_lightning: Vision Retention Networks for dense vision, on timm and PyTorch Lightning.

Importing the package registers the ViR models in timm (``timm.create_model('vir_base_patch16_224')``).
mmsegmentation is reached through ``vir_lightning.mmseg`` (which makes it work on mmcv-lite and puts
the backbones in its registry), imported only by what needs it.
"""
from pathlib import Path

_checkout = Path(__file__).resolve().parent.parent
if (_checkout / 'pyproject.toml').is_file() and (_checkout / 'heads' / '__init__.py').is_file():
    # Run from a source checkout (e.g. `python -m vir_lightning` in the repository root, which puts
    # this folder ahead of an installed copy): heads/, datamodules/ and configs/ sit beside the
    # package here, and are found as vir_lightning.heads, ... as in the installed wheel.
    __path__.append(str(_checkout))
del _checkout, Path

from .models import (  # noqa: E402
    DECAY_SCHEDULES, DIRECTIONS, RETENTION_MODES, Retention, RetentionBlock, VisionRetentionNetwork,
    checkpoint_filter_fn, decay_schedule, retention,
)

__all__ = [
    'DECAY_SCHEDULES', 'DIRECTIONS', 'RETENTION_MODES', 'decay_schedule', 'retention',
    'Retention', 'RetentionBlock', 'VisionRetentionNetwork', 'checkpoint_filter_fn',
]
__version__ = '0.1.0'
