import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vir_lightning.cli import config_dir, main, resolve_config

TINY_DEMO = [  # the packaged demo, shrunk to seconds
    '--trainer.max_epochs=1', '--trainer.limit_train_batches=3', '--trainer.limit_val_batches=2',
    '--trainer.limit_test_batches=2', '--trainer.limit_predict_batches=2', '--data.num_workers=0',
    '--model.backbone_kwargs.depth=1', '--trainer.log_every_n_steps=1',
]


def run_main(args, capsys):
    """main() in-process; returns (exit code, stdout, stderr)."""
    code = 0
    try:
        main(args)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_packaged_configs_exist_and_parse():
    names = {str(p.relative_to(config_dir())) for p in config_dir().rglob('*.yaml')}
    assert {'cls_demo.yaml', 'cls_imagenet.yaml', 'trainer/ddp.yaml', 'trainer/bf16.yaml'} <= names
    for name in names:
        assert isinstance(yaml.safe_load((config_dir() / name).read_text()), dict)


def test_bare_name_resolves_to_packaged_config_unless_a_local_file_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Path(resolve_config('cls_demo.yaml')) == config_dir() / 'cls_demo.yaml'
    assert Path(resolve_config('cls_demo')) == config_dir() / 'cls_demo.yaml'
    (tmp_path / 'cls_demo.yaml').write_text('trainer: {max_epochs: 1}\n')
    assert resolve_config('cls_demo.yaml') == 'cls_demo.yaml'


def test_unknown_config_lists_the_packaged_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', 'nope.yaml'], capsys)
    assert code == 2 and 'cls_demo.yaml' in err and 'Traceback' not in err


def test_help_and_print_config(tmp_path):
    env = {**os.environ, 'NO_ALBUMENTATIONS_UPDATE': '1'}
    result = subprocess.run([sys.executable, '-m', 'vir_lightning', '--help'], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0 and 'fit' in result.stdout and 'predict' in result.stdout
    result = subprocess.run(
        [sys.executable, '-m', 'vir_lightning', 'fit', '--config', 'cls_demo.yaml', '--print_config'],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config['model']['class_path'] == 'vir_lightning.tasks.ClassificationTask'
    assert config['data']['init_args']['batch_size'] == 32


def test_fit_validate_test_predict_on_the_demo(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', 'cls_demo.yaml', *TINY_DEMO], capsys)
    assert code == 0, err
    run_dir = tmp_path / 'runs' / 'cls_demo' / 'version_0'
    checkpoints = {p.name for p in (run_dir / 'checkpoints').iterdir()}
    assert 'last.ckpt' in checkpoints and any(n.startswith('best-epoch00-acc') for n in checkpoints)
    events = list(run_dir.glob('events.out.tfevents.*'))
    assert events and (run_dir / 'config.yaml').is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(run_dir)).Reload()
    assert {'train/loss', 'val/acc1', 'val/acc5'} <= set(accumulator.Tags()['scalars'])
    assert any(tag.startswith('lr-') for tag in accumulator.Tags()['scalars'])
    assert 'val/predictions' in accumulator.Tags()['images']

    last = str(run_dir / 'checkpoints' / 'last.ckpt')
    for sub in ('validate', 'test'):
        code, _, err = run_main([sub, '--config', 'cls_demo.yaml', *TINY_DEMO, '--ckpt_path', last], capsys)
        assert code == 0, err
    for expected in ('predictions.csv', 'predictions-1.csv'):  # a second run never overwrites the first
        code, out, err = run_main(['predict', '--config', 'cls_demo.yaml', *TINY_DEMO, '--ckpt_path', last], capsys)
        assert code == 0, err
        rows = list(csv.DictReader(open(tmp_path / 'outputs' / 'cls_demo' / expected)))
        assert len(rows) == 64 and rows[0]['class'] in [str(i) for i in range(10)]
        assert 0 <= float(rows[0]['score']) <= 1


@pytest.mark.parametrize('option,expected', [
    ('--model.backbone=vir_huge_patch16_224', 'vir_tiny_patch16_224'),
    ('--data.image_size=30', 'not a multiple'),
])
def test_user_mistakes_end_in_one_clear_message(tmp_path, monkeypatch, capsys, option, expected):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', 'cls_demo.yaml', *TINY_DEMO, option], capsys)
    assert code == 2 and expected in err and 'Traceback' not in err


def test_missing_imagenet_stops_at_once_with_directions(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', 'cls_imagenet.yaml', '--data.root', str(tmp_path / 'none')], capsys)
    assert code == 2 and str(tmp_path / 'none' / 'train') in err
    assert 'cls_demo.yaml' in err and '--data.root' in err and 'Traceback' not in err


def test_corrupt_image_in_a_worker_names_the_file(image_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    broken = image_folder / 'val' / 'red' / '0.png'
    broken.write_bytes(b'garbage')
    code, _, err = run_main([
        'validate', '--model=vir_lightning.tasks.ClassificationTask', '--model.backbone_kwargs.img_size=32',
        '--model.backbone_kwargs.patch_size=8', '--model.backbone_kwargs.depth=1',
        '--model.backbone_kwargs.embed_dim=32', '--model.backbone_kwargs.num_heads=2',
        '--data=vir_lightning.datamodules.ImageFolderDataModule', f'--data.root={image_folder}', '--data.image_size=32',
        '--data.batch_size=4', '--data.num_workers=1', '--trainer.accelerator=cpu', '--trainer.logger=false'], capsys)
    assert code == 2 and str(broken) in err and 'Original Traceback' not in err
