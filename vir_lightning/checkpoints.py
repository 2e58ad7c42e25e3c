"""Finding and reading checkpoints: a run's latest ``last.ckpt`` (``--ckpt_path last``), ``weights_only``
loading, and one message that names a file which is missing, empty, truncated, not a checkpoint, of
another task, or of another model, before any work is done."""
import importlib
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .errors import UserError, listing

TASK_KEY = 'vir_lightning_task'  # written by VisionTask.on_save_checkpoint: the task's import path


def read_weights(path, option: str = '--ckpt_path') -> Dict[str, Any]:
    """A checkpoint or weights file's dict, tensors memory-mapped (cheap to open, even for a large file),
    or a UserError naming the file and what is wrong with it.

    ``weights_only=True``: a checkpoint is never allowed to run code while it is read.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        hint = 'it is a folder: pass one of its .ckpt files' if path.is_dir() else 'no such file'
        raise UserError(f"{option} '{path}': {hint}")
    if path.stat().st_size == 0:
        raise UserError(f"{option} '{path}' is empty (0 bytes): the run that wrote it was stopped while "
                        f"saving; use another checkpoint of the run, e.g. its last.ckpt or best-*.ckpt")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{option} '{path}' is not a PyTorch checkpoint (not a zip archive: truncated, "
                        f"corrupt or another kind of file); use a .ckpt written by vir_lightning fit")
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for broken files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{option} '{path}' cannot be read as a checkpoint ({reason[:200]}); it is truncated "
                        f"or corrupt: use another checkpoint of the run") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{option} '{path}' holds a {type(checkpoint).__name__}, not a dict of weights")
    return checkpoint


def read_checkpoint(path, option: str = '--ckpt_path') -> Dict[str, Any]:
    """``read_weights`` for a Lightning checkpoint: a UserError when the file has no 'state_dict'."""
    checkpoint = read_weights(path, option)
    if 'state_dict' not in checkpoint:
        raise UserError(f"{option} '{Path(path).expanduser()}' holds no Lightning 'state_dict': it is a plain "
                        f"weights file, not a checkpoint of vir_lightning fit (timm weights go in "
                        f"--model.backbone_kwargs)")
    return checkpoint


def task_path(checkpoint: Dict[str, Any]) -> Optional[str]:
    """The import path of the task that wrote ``checkpoint`` (None when it does not say)."""
    return checkpoint.get(TASK_KEY) or checkpoint.get('hyper_parameters', {}).get('_class_path')


def check_task(checkpoint: Dict[str, Any], expected: str, path, option: str = '--ckpt_path') -> None:
    """A UserError unless ``checkpoint`` was written by the task class named ``expected`` (or does not say)."""
    written_by = task_path(checkpoint)
    if written_by is not None and written_by.rsplit('.', 1)[-1] != expected:
        raise UserError(f"{option} '{path}' is a {written_by.rsplit('.', 1)[-1]} checkpoint but the config "
                        f"builds a {expected}: use the config it was trained with, or a {expected} checkpoint")


def check_fits(checkpoint: Dict[str, Any], model: torch.nn.Module, path, option: str = '--ckpt_path') -> None:
    """A UserError unless ``checkpoint`` was written by ``model``'s task and its weights fit ``model``."""
    check_task(checkpoint, type(model).__name__, path, option)
    saved_classes = checkpoint.get('hyper_parameters', {}).get('num_classes')
    if saved_classes is not None and saved_classes != getattr(model, 'num_classes', saved_classes):
        raise UserError(f"{option} '{path}' predicts {saved_classes} classes but the data has {model.num_classes}: "
                        f"use a checkpoint trained on this data, or data with {saved_classes} classes")
    mismatch = state_mismatch(checkpoint['state_dict'], model.state_dict())
    if mismatch:
        raise UserError(f"{option} '{path}' does not fit the model the config builds ({mismatch}): "
                        f"pass the --model options it was trained with (its run folder has config.yaml)")


def state_mismatch(saved: Dict[str, Any], own: Dict[str, Any]) -> Optional[str]:
    """What keeps the ``saved`` weights from loading into a model with state ``own`` (None: they fit):
    missing and unexpected keys, other shapes, a few of each."""
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    wrong = [f'{k} {tuple(saved[k].shape)} vs {tuple(own[k].shape)}'
             for k in own if k in saved and tuple(saved[k].shape) != tuple(own[k].shape)]
    parts = [f'{label}: {listing(items, 3)}' for label, items in
             (('missing', missing), ('unexpected', unexpected), ('other shapes', wrong)) if items]
    return '; '.join(parts) or None


def load_task(path, option: str = '--ckpt_path') -> torch.nn.Module:
    """The task that wrote ``path``, built from its saved hyperparameters, weights loaded, in eval mode."""
    checkpoint = read_checkpoint(path, option)
    written_by = task_path(checkpoint)
    if written_by is None:
        raise UserError(f"{option} '{path}' does not say which task wrote it: it was not written by vir_lightning")
    module, name = written_by.rsplit('.', 1)
    task_class = getattr(importlib.import_module(module), name)
    hparams = {k: v for k, v in checkpoint.get('hyper_parameters', {}).items() if not k.startswith('_')}
    task = task_class(**hparams)
    check_fits(checkpoint, task, path, option)
    task.load_state_dict(checkpoint['state_dict'])
    return task.eval()


def is_local_file_path(ckpt_path) -> bool:
    """A path on this machine, not a URL (s3://, https://) nor Lightning's 'hpc' or 'registry' keywords."""
    return bool(ckpt_path) and '://' not in str(ckpt_path) and ckpt_path not in ('hpc', 'registry')


def logger_args(logger):
    """A file logger's init_args (save_dir, name) from the trainer config, or None."""
    init_args = getattr(logger, 'init_args', None)
    return init_args if init_args is not None and init_args.get('save_dir') is not None else None


def _run_folders(trainer_config) -> List[Path]:
    """Where a run's checkpoints can be: the logger's ``save_dir/name/*/checkpoints``, the callbacks'
    ``dirpath``, or ``default_root_dir/checkpoints`` when there is no logger."""
    folders = []
    args = logger_args(trainer_config.get('logger'))
    if args is not None:
        folders += (Path(args.save_dir) / (args.get('name') or '')).glob('*/checkpoints')
    elif not trainer_config.get('logger'):
        folders.append(Path(trainer_config.get('default_root_dir') or '.') / 'checkpoints')
    for callback in trainer_config.get('callbacks') or []:
        dirpath = getattr(getattr(callback, 'init_args', None), 'dirpath', None)
        if dirpath:
            folders.append(Path(dirpath))
    return folders


def latest_last_checkpoint(trainer_config) -> Optional[Path]:
    """The newest ``last.ckpt`` of the run that this trainer config writes (same root and name)."""
    found = [folder / 'last.ckpt' for folder in _run_folders(trainer_config) if (folder / 'last.ckpt').is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def describe_run(trainer_config) -> str:
    args = logger_args(trainer_config.get('logger'))
    if args is not None:
        return f"'{Path(args.save_dir) / (args.get('name') or '')}'"
    return f"'{Path(trainer_config.get('default_root_dir') or '.') / 'checkpoints'}'"
