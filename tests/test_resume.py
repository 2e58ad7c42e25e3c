"""Nothing lost: a fit killed with SIGKILL resumes with --ckpt_path last to exactly the uninterrupted result;
last.ckpt is the latest state; writes are atomic; non-finite training stops (or skips) and never saves NaN."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from test_cli import run_main

FAST = ['--trainer.max_epochs=2', '--trainer.limit_train_batches=5', '--trainer.limit_val_batches=3',
        '--model.backbone_kwargs.depth=2', '--model.backbone_kwargs.embed_dim=32', '--data.num_workers=1',
        '--model.backbone_kwargs.drop_path_rate=0.5',  # drop-path in block 2: the model draws random numbers too
        '--trainer.enable_progress_bar=false', '--trainer.log_every_n_steps=1']


def steps_config(folder: Path) -> Path:
    """cls_demo.yaml with last.ckpt also every 3 steps (as the long real-data configs save it), no Rich bar."""
    from vir_lightning.cli import config_dir
    config = yaml.safe_load((config_dir() / 'cls_demo.yaml').read_text())
    callbacks = [c for c in config['trainer']['callbacks'] if not c['class_path'].endswith('RichProgressBar')]
    for callback in callbacks:
        if callback['class_path'].endswith('LastCheckpoint'):
            callback['init_args'] = {'every_n_train_steps': 3}
    config['trainer']['callbacks'] = callbacks
    path = folder / 'steps.yaml'
    path.write_text(yaml.safe_dump(config))
    return path


def fit(folder: Path, config: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, 'NO_ALBUMENTATIONS_UPDATE': '1',
           'PYTHONPATH': os.pathsep.join([str(Path(__file__).parent), os.environ.get('PYTHONPATH', '')])}
    return subprocess.run([sys.executable, '-m', 'vir_lightning', 'fit', '--config', str(config), *FAST,
                           f'--trainer.logger.init_args.name={name}', *extra],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def kill_at(step: int):
    return ['--trainer.callbacks+=kill_switch.KillAtStep', f'--trainer.callbacks.step={step}']


def val_curve(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    curve = {}
    for events in sorted(run_dir.glob('events.out.tfevents.*')):
        accumulator = EventAccumulator(str(events)).Reload()
        if 'val/acc1' in accumulator.Tags()['scalars']:  # a run killed before its first validation has none
            curve.update({scalar.step: scalar.value for scalar in accumulator.Scalars('val/acc1')})
    return curve


def test_a_fit_killed_at_an_epoch_end_and_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    config = steps_config(tmp_path)
    full = fit(tmp_path, config, 'full')
    assert full.returncode == 0, full.stderr[-3000:]

    killed = fit(tmp_path, config, 'killed', *kill_at(5))  # first step of epoch 1: last.ckpt is epoch 0's end
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / 'runs' / 'killed' / 'version_0' / 'checkpoints' / 'last.ckpt'
    assert torch.load(last, weights_only=True)['global_step'] == 5
    killed = fit(tmp_path, config, 'killed', '--ckpt_path=last', *kill_at(7))  # mid-epoch: saved at step 6
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert 'resuming' in killed.stderr and str(Path('killed') / 'version_0') in killed.stderr
    assert torch.load(last, weights_only=True)['global_step'] == 6
    resumed = fit(tmp_path, config, 'killed', '--ckpt_path=last')
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    ends = {name: torch.load(tmp_path / 'runs' / name / 'version_0' / 'checkpoints' / 'last.ckpt', weights_only=True)
            for name in ('full', 'killed')}
    assert ends['full']['global_step'] == ends['killed']['global_step'] == 10  # last.ckpt: the final state
    for key, value in ends['full']['state_dict'].items():
        torch.testing.assert_close(ends['killed']['state_dict'][key], value, rtol=1e-6, atol=1e-7, msg=key)
    assert [p.name for p in (tmp_path / 'runs' / 'killed').iterdir()] == ['version_0']  # one run folder
    full_curve, resumed_curve = val_curve(tmp_path / 'runs' / 'full' / 'version_0'), \
        val_curve(tmp_path / 'runs' / 'killed' / 'version_0')
    assert sorted(full_curve) == sorted(resumed_curve) == [4, 9]  # one continuous curve, every epoch
    assert resumed_curve == pytest.approx(full_curve, abs=1e-6)


def test_last_with_no_earlier_run_trains_from_scratch_and_evaluating_it_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['validate', '--config', 'cls_demo.yaml', '--ckpt_path', 'last'], capsys)
    assert code == 2 and 'no last.ckpt' in err and str(Path('runs') / 'cls_demo') in err


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    """A save that dies half-way (here: the write raises after part of the bytes) leaves the previous
    last.ckpt whole and no partial file, as Lightning's fsspec transaction writes beside and renames."""
    import fsspec.implementations.local as local
    from lightning.pytorch.plugins.io import TorchCheckpointIO
    io = TorchCheckpointIO()
    path = tmp_path / 'last.ckpt'
    io.save_checkpoint({'state_dict': {'w': torch.ones(1000)}}, path)
    real_write = local.LocalFileOpener.write

    def dying_write(self, data):
        real_write(self, data[:len(data) // 3])
        raise OSError('killed mid-write')
    monkeypatch.setattr(local.LocalFileOpener, 'write', dying_write)
    with pytest.raises(OSError):
        io.save_checkpoint({'state_dict': {'w': torch.zeros(1000)}}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)['state_dict']['w'], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ['last.ckpt']


NAN = ['--trainer.max_epochs=2', '--trainer.limit_train_batches=5', '--trainer.limit_val_batches=2',
       '--model.backbone_kwargs.depth=1', '--model.backbone_kwargs.embed_dim=32', '--data.num_workers=0',
       '--model.lr=1e6']


def test_non_finite_training_stops_with_the_step_and_saves_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', 'cls_demo.yaml', *NAN], capsys)
    assert code == 2 and 'training stopped at step 2' in err and '--model.on_non_finite skip' in err, err
    assert not list(tmp_path.rglob('*.ckpt'))


def test_skipping_non_finite_steps_counts_them_and_keeps_the_weights_finite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', 'cls_demo.yaml', *NAN, '--model.on_non_finite=skip'], capsys)
    assert code == 0, err
    checkpoints = list(tmp_path.rglob('*.ckpt'))
    assert len(checkpoints) == 2  # best and last
    last = next(p for p in checkpoints if p.name == 'last.ckpt')
    assert torch.load(last, weights_only=True)['global_step'] == 10  # the final state, whichever epoch was best
    for path in checkpoints:
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint['skipped_steps'] > 0
        assert all(v.isfinite().all() for v in checkpoint['state_dict'].values() if v.is_floating_point())


def test_nan_weights_are_never_saved(tmp_path):
    from lightning.pytorch import Trainer
    from vir_lightning.tasks import ClassificationTask
    from vir_lightning.tasks.base import NonFiniteError
    from conftest import TINY_VIR
    task = ClassificationTask(num_classes=3, backbone_kwargs=TINY_VIR)
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(task)
    with torch.no_grad():
        next(task.parameters()).fill_(float('nan'))
    with pytest.raises(NonFiniteError, match='NaN or infinite'):
        trainer.save_checkpoint(tmp_path / 'x.ckpt')
    assert not (tmp_path / 'x.ckpt').exists()
