"""Every mistake the README promises one message for: exit 2, one line naming the file or option, nothing written."""
import os

import pytest

from test_cli import TINY_DEMO, run_main

TINY = [*TINY_DEMO, '--model.backbone_kwargs.embed_dim=32']


@pytest.fixture(scope='module')
def demo_checkpoint(tmp_path_factory):
    """last.ckpt of a tiny cls_demo run (made once for the module)."""
    folder = tmp_path_factory.mktemp('demo_run')
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        from vir_lightning.cli import main
        try:
            main(['fit', '--config', 'cls_demo.yaml', *TINY, '--trainer.enable_progress_bar=false',
                  '--trainer.callbacks=[]', '--trainer.callbacks+=vir_lightning.callbacks.LastCheckpoint'])
        except SystemExit as exit_:
            assert exit_.code in (0, None)
    finally:
        os.chdir(cwd)
    return folder / 'runs' / 'cls_demo' / 'version_0' / 'checkpoints' / 'last.ckpt'


def one_line_error(code, err, *expected):
    assert code == 2, err
    assert 'Traceback' not in err, err
    lines = [line for line in err.splitlines() if line.startswith('error:')]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob('*') if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize('damage', ['truncated', 'empty', 'random', 'missing', 'folder', 'weights'])
@pytest.mark.parametrize('subcommand', ['fit', 'validate', 'predict'])
def test_a_bad_checkpoint_is_named_before_any_work(demo_checkpoint, tmp_path, monkeypatch, capsys, damage, subcommand):
    import torch
    monkeypatch.chdir(tmp_path)
    path = tmp_path / 'bad.ckpt'
    data = demo_checkpoint.read_bytes()
    if damage == 'truncated':
        path.write_bytes(data[:len(data) // 2])
    elif damage == 'empty':
        path.write_bytes(b'')
    elif damage == 'random':
        path.write_bytes(os.urandom(4096))
    elif damage == 'folder':
        path.mkdir()
    elif damage == 'weights':  # a plain state dict, not a Lightning checkpoint
        torch.save({'weight': torch.zeros(2)}, path)
    code, _, err = run_main([subcommand, '--config', 'cls_demo.yaml', *TINY, '--ckpt_path', str(path)], capsys)
    line = one_line_error(code, err, str(path), '--ckpt_path')
    assert 'weights_only' not in line
    assert _files(tmp_path) == ([] if damage in ('missing', 'folder') else [path.relative_to(tmp_path)])


def test_a_checkpoint_of_another_task_names_both_tasks(demo_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['validate', '--config', 'seg_demo.yaml', '--data.root', str(tmp_path / 'scenes'),
                             '--trainer.limit_val_batches=1', '--ckpt_path', str(demo_checkpoint)], capsys)
    one_line_error(code, err, 'ClassificationTask', 'SegmentationTask', str(demo_checkpoint))


def test_a_checkpoint_for_another_class_count_names_both_counts(demo_checkpoint, image_folder, tmp_path,
                                                                monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['validate', '--config', 'cls_demo.yaml', *TINY, '--ckpt_path', str(demo_checkpoint),
                             '--data=vir_lightning.datamodules.ImageFolderDataModule', f'--data.root={image_folder}',
                             '--data.image_size=28', '--data.num_workers=0'], capsys)
    one_line_error(code, err, 'predicts 10 classes', 'has 3', str(demo_checkpoint))


def test_a_plain_state_dict_is_not_taken_for_a_checkpoint(tmp_path):
    import torch
    from vir_lightning.checkpoints import load_task
    from vir_lightning.errors import UserError
    torch.save({'weight': torch.zeros(2)}, tmp_path / 'w.pt')
    with pytest.raises(UserError, match="no Lightning 'state_dict'"):
        load_task(tmp_path / 'w.pt')


@pytest.mark.parametrize('option,expected', [
    ('--data.num_workers=-1', '--data.num_workers'),
    ('--model.lr=-0.1', '--model.lr'),
    ('--model.lr=0', '--model.lr'),
    ('--model.inference_retention_mode=fast', 'inference_retention_mode'),
    ('--model.on_non_finite=ignore', 'on_non_finite'),
])
def test_bad_options_are_refused_before_training(tmp_path, monkeypatch, capsys, option, expected):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', 'cls_demo.yaml', *TINY, option], capsys)
    assert code == 2 and expected in err and 'Traceback' not in err, err
    assert not (tmp_path / 'runs').exists()


def test_a_task_given_data_of_another_task_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', 'cls_demo.yaml', *TINY,
                             '--data=vir_lightning.datamodules.SyntheticScenesDataModule',
                             f'--data.root={tmp_path / "scenes"}', '--data.num_workers=0'], capsys)
    one_line_error(code, err, 'ClassificationTask', 'SyntheticScenesDataModule')


def test_a_geometry_for_a_backbone_without_one_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', 'cls_demo.yaml', *TINY, '--model.backbone=vit_tiny_patch16_224',
                             '--model.backbone_kwargs.geometry=2d'], capsys)
    one_line_error(code, err, 'geometry 2d', 'vit_tiny_patch16_224', 'vir_tiny_patch16_224')
    assert not (tmp_path / 'runs').exists()


def test_no_logger_drops_the_lr_monitor_instead_of_failing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', 'cls_demo.yaml', *TINY, '--trainer.logger=false'], capsys)
    assert code == 0, err


def test_unwritable_predict_folder_is_refused_before_predicting(demo_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'a_file').write_text('not a folder')  # unwritable for root too
    out_dir = tmp_path / 'a_file' / 'out'
    code, out, err = run_main(['predict', '--config', 'cls_demo.yaml', *TINY, '--ckpt_path', str(demo_checkpoint),
                               '--trainer.callbacks.output_dir', str(out_dir)], capsys)
    one_line_error(code, err, str(out_dir))
    assert 'Predicting' not in out


def test_a_yaml_syntax_error_names_its_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'broken.yaml').write_text('trainer:\n  max_epochs: [1\n')
    code, _, err = run_main(['fit', '--config', 'broken.yaml'], capsys)
    one_line_error(code, err, 'broken.yaml')


@pytest.mark.parametrize('option', [{'inference_retention_mode': 'fast'}, {'on_non_finite': 'ignore'}])
def test_python_callers_get_the_choices_at_construction(option):
    from vir_lightning.tasks import ClassificationTask
    with pytest.raises(ValueError, match=list(option)[0]):
        ClassificationTask(num_classes=3, **option)
