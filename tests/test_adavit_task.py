"""AdaViT in the application: cls_demo.yaml, then cls_demo_adavit.yaml from its checkpoint, logs the usage
ratios, GFLOPs and kept-patch images; bad options and checkpoints get one clear message; the adaptive
benchmark measures the checkpoints."""
import json
import os
from pathlib import Path

import pytest
import torch

from test_bad_input import one_line_error
from test_cli import run_main
from vir_lightning.errors import UserError

SMALL = ['--model.backbone_kwargs.depth=3', '--model.backbone_kwargs.embed_dim=32',
         '--model.backbone_kwargs.num_heads=2']
QUICK = ['--trainer.max_epochs=1', '--trainer.limit_train_batches=4', '--trainer.limit_val_batches=2',
         '--data.num_workers=0', '--trainer.log_every_n_steps=1']


def _fit(folder: Path, *args) -> None:
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        from vir_lightning.cli import main
        try:
            main(['fit', *args])
        except SystemExit as exit_:
            assert exit_.code in (0, None)
    finally:
        os.chdir(cwd)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """A tiny cls_demo run, then cls_demo_adavit fine-tuned from its checkpoint (made once for the module)."""
    folder = tmp_path_factory.mktemp('adavit_runs')
    _fit(folder, '--config', 'cls_demo.yaml', *SMALL, *QUICK)
    plain = next((folder / 'runs' / 'cls_demo' / 'version_0' / 'checkpoints').glob('best-*.ckpt'))
    _fit(folder, '--config', 'cls_demo_adavit.yaml', *SMALL, *QUICK, f'--model.init_checkpoint={plain}')
    adaptive = next((folder / 'runs' / 'cls_demo_adavit' / 'version_0' / 'checkpoints').glob('best-*.ckpt'))
    return folder, plain, adaptive


def test_the_demo_fine_tunes_a_checkpoint_and_logs_usage_gflops_and_kept_patches(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    folder, _, adaptive = runs
    events = EventAccumulator(str(adaptive.parent.parent)).Reload()
    scalars = events.Tags()['scalars']
    for tag in ('val/acc1', 'val/GFLOPs', 'val/GMACs', 'val/usage_patches', 'val/usage_heads', 'val/usage_blocks',
                'train/usage_loss', 'train/task_loss'):
        assert tag in scalars, tag
    gflops = events.Scalars('val/GFLOPs')[-1].value
    assert events.Scalars('val/GMACs')[-1].value == pytest.approx(gflops / 2)
    assert 'val/kept_patches_per_block' in events.Tags()['images']


def test_the_init_checkpoint_gives_the_backbone_and_head_their_trained_weights(runs):
    from vir_lightning.tasks import AdaptiveClassificationTask
    _, plain, _ = runs
    saved = torch.load(plain, weights_only=True)['state_dict']
    task = AdaptiveClassificationTask(num_classes=10, init_checkpoint=str(plain),
                                      backbone_kwargs=dict(img_size=28, patch_size=4, embed_dim=32, num_heads=2,
                                                           depth=3, init_values=0.1))
    task.load_init_checkpoint(str(plain))
    own = task.state_dict()
    inner = {k: v for k, v in saved.items() if k.startswith('backbone.')}
    assert inner and all(torch.equal(own[f'backbone.backbone.{k[9:]}'], v) for k, v in inner.items())
    task.eval()
    images = torch.randn(2, 3, 28, 28)  # decisions start as "keep": the fine-tune starts from the plain model
    from vir_lightning.checkpoints import load_task
    torch.testing.assert_close(task(images), load_task(plain)(images), rtol=1e-5, atol=1e-5)


def test_the_adaptive_benchmark_reports_accuracy_gflops_and_real_speed_up(runs, tmp_path):
    from vir_lightning.tools.benchmark import main
    _, plain, adaptive = runs
    output = main(['adaptive', str(plain), str(adaptive), '--images', '24', '--batch-sizes', '1', '8',
                   '--repeats', '1', '--warmup', '0', '--output', str(tmp_path / 'out')])
    results = json.loads((output / 'results.json').read_text())['results']
    full, ada = results
    assert full['task'] == 'ClassificationTask' and ada['task'] == 'AdaptiveClassificationTask'
    assert 0 < ada['gflops'] <= full['gflops'] * 1.02 and 0 <= ada['score'] <= 1 and ada['metric'] == 'top-1'
    assert set(ada['usage']) == {'patches', 'heads', 'blocks'} and ada['targets']['heads'] == 0.5
    assert set(ada['full_images_per_s']) == set(ada['images_per_s']) == {'1', '8'}
    assert '| best-' in (output / 'results.md').read_text() and (output / 'accuracy_gflops.png').stat().st_size


def test_a_timm_weights_file_initialises_the_backbone(runs, tmp_path):
    """A plain timm state dict (what timm.create_model(..., pretrained_cfg_overlay=dict(file=...)) reads) is a
    valid start: the backbone gets it, the task's own head keeps its initialisation."""
    from vir_lightning.tasks import AdaptiveClassificationTask
    _, plain, _ = runs
    saved = torch.load(plain, weights_only=True)['state_dict']
    timm_file = tmp_path / 'vir.pth'
    torch.save({k[len('backbone.'):]: v for k, v in saved.items() if k.startswith('backbone.')}, timm_file)
    task = AdaptiveClassificationTask(num_classes=10, init_checkpoint=str(timm_file),
                                      backbone_kwargs=dict(img_size=28, patch_size=4, embed_dim=32, num_heads=2,
                                                           depth=3, init_values=0.1))
    head_before = {k: v.clone() for k, v in task.head.state_dict().items()}
    task.load_init_checkpoint(str(timm_file))
    own = task.backbone.backbone.state_dict()
    assert all(torch.equal(own[k[len('backbone.'):]], v) for k, v in saved.items() if k.startswith('backbone.'))
    assert all(torch.equal(task.head.state_dict()[k], v) for k, v in head_before.items())


def test_export_refuses_an_adavit_checkpoint_and_names_the_way_out(runs, tmp_path):
    from vir_lightning.tools.export import main
    _, _, adaptive = runs
    with pytest.raises(UserError, match='AdaViT checkpoint .*predict'):
        main(['--ckpt_path', str(adaptive), '--format', 'safetensors', '--output', str(tmp_path / 'out')])
    assert not (tmp_path / 'out').exists() or not list((tmp_path / 'out').iterdir())


def test_without_an_init_checkpoint_it_trains_from_scratch_and_says_so():
    from vir_lightning.tasks import AdaptiveClassificationTask
    with pytest.warns(UserWarning, match='from scratch'):
        AdaptiveClassificationTask(num_classes=3, backbone_kwargs=dict(img_size=28, patch_size=4, embed_dim=32,
                                                                       num_heads=2, depth=2))


@pytest.mark.parametrize('option,expected', [
    ('--model.patch_target=1.5', '--model.patch_target 1.5 is not a kept fraction'),
    ('--model.block_target=-0.1', '--model.block_target'),
    ('--model.tau=0', '--model.tau 0'),
    ('--model.backbone=qna_vit_tiny', 'AdaViT adapts ViR'),
    ('--model.backbone=resnet18', 'AdaViT adapts ViR'),
])
def test_bad_adavit_options_are_refused_before_training(tmp_path, monkeypatch, capsys, option, expected):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', 'cls_demo_adavit.yaml', *SMALL, *QUICK, option], capsys)
    one_line_error(code, err, expected)
    assert not list(tmp_path.rglob('*.ckpt'))


def test_an_init_checkpoint_of_another_task_or_architecture_says_what_it_found(runs, tmp_path, monkeypatch, capsys):
    _, plain, _ = runs
    monkeypatch.chdir(tmp_path)
    other_task = dict(torch.load(plain, weights_only=True))
    other_task['vir_lightning_task'] = 'vir_lightning.tasks.segmentation.SegmentationTask'
    torch.save(other_task, tmp_path / 'seg.ckpt')
    fit = ['fit', '--config', 'cls_demo_adavit.yaml', *QUICK]
    code, _, err = run_main([*fit, *SMALL, '--model.init_checkpoint=seg.ckpt'], capsys)
    one_line_error(code, err, "'seg.ckpt' is a SegmentationTask checkpoint", 'ClassificationTask')
    code, _, err = run_main([*fit, '--model.backbone_kwargs.depth=3', f'--model.init_checkpoint={plain}'], capsys)
    one_line_error(code, err, 'does not fit this model', 'other shapes')
    code, _, err = run_main([*fit, *SMALL, '--model.backbone=vit_tiny_patch16_224',
                             f'--model.init_checkpoint={plain}'], capsys)
    one_line_error(code, err, 'trained with backbone vir_tiny_patch16_224', 'vit_tiny_patch16_224')
    code, _, err = run_main([*fit, *SMALL, '--model.init_checkpoint=missing.ckpt'], capsys)
    one_line_error(code, err, "--model.init_checkpoint 'missing.ckpt': no such file")
    assert not list(tmp_path.rglob('runs/**/*.ckpt'))


# ----------------------------------------------------------------------------------------------
# segmentation: head and block policies, every patch kept

TINY_SEG = ['--trainer.max_epochs=1', '--trainer.limit_train_batches=2', '--trainer.limit_val_batches=2',
            '--trainer.log_every_n_steps=1', '--data.num_workers=0', '--data.num_train=8', '--data.num_val=2',
            '--data.batch_size=4', '--model.backbone_kwargs.depth=4', '--model.backbone_kwargs.embed_dim=32',
            '--model.out_indices=[0, 1, 2, 3]']


@pytest.fixture(scope='module')
def seg_runs(tmp_path_factory):
    """A tiny seg_demo run, then seg_demo_adavit fine-tuned from its checkpoint."""
    folder = tmp_path_factory.mktemp('adavit_seg_runs')
    _fit(folder, '--config', 'seg_demo.yaml', *TINY_SEG)
    plain = next((folder / 'runs' / 'seg_demo' / 'version_0' / 'checkpoints').glob('best-*.ckpt'))
    _fit(folder, '--config', 'seg_demo_adavit.yaml', *TINY_SEG, f'--model.init_checkpoint={plain}')
    adaptive = next((folder / 'runs' / 'seg_demo_adavit' / 'version_0' / 'checkpoints').glob('best-*.ckpt'))
    return folder, plain, adaptive


def test_the_segmentation_demo_fine_tunes_head_and_block_policies(seg_runs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vir_lightning.checkpoints import load_task
    from vir_lightning.tools.benchmark import main
    folder, plain, adaptive = seg_runs
    events = EventAccumulator(str(adaptive.parent.parent)).Reload()
    for tag in ('val/mIoU', 'val/GFLOPs', 'val/usage_heads', 'val/usage_blocks', 'train/usage_loss', 'train/task_loss'):
        assert tag in events.Tags()['scalars'], tag
    assert 'val/usage_patches' not in events.Tags()['scalars']

    fresh = load_task(adaptive)  # the init checkpoint gave the backbone and head their trained weights
    fresh.load_init_checkpoint(str(plain))
    saved = torch.load(plain, weights_only=True)['state_dict']
    own = fresh.state_dict()
    assert all(torch.equal(own['backbone.backbone.' + k[len('backbone.model.'):]], v)
               for k, v in saved.items() if k.startswith('backbone.model.'))
    assert all(torch.equal(own[k], v) for k, v in saved.items() if k.startswith('head.'))
    fresh.eval()  # decisions at "keep everything": the adaptive model is the plain one
    images = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(fresh(images)[0], load_task(plain).eval()(images)[0], rtol=1e-5, atol=1e-5)

    cwd = os.getcwd()
    os.chdir(folder)  # the data root of the run's config.yaml is relative to where it ran
    try:
        output = main(['adaptive', str(plain), str(adaptive), '--images', '2', '--batch-sizes', '1',
                       '--repeats', '1', '--warmup', '0', '--output', str(tmp_path / 'out')])
    finally:
        os.chdir(cwd)
    full, ada = json.loads((output / 'results.json').read_text())['results']
    assert full['metric'] == ada['metric'] == 'mIoU' and 0 <= ada['score'] <= 1
    assert set(ada['usage']) == {'heads', 'blocks'} and 0 < ada['gflops'] <= full['gflops'] * 1.02


@pytest.mark.parametrize('backbone', ['qna_vit_tiny', 'resnet18'])
def test_a_segmentation_backbone_adavit_cannot_adapt_is_named(tmp_path, monkeypatch, capsys, backbone):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', 'seg_demo_adavit.yaml', *TINY_SEG, f'--model.backbone={backbone}'],
                            capsys)
    one_line_error(code, err, 'AdaViT adapts ViR')


def test_segmentation_keeps_every_patch(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', 'seg_demo_adavit.yaml', *TINY_SEG, '--model.adapt=[patches]'], capsys)
    assert code != 0 and 'adapt' in err
    from vir_lightning.tasks import AdaptiveSegmentationTask
    with pytest.raises(UserError, match='keeps every patch'):
        AdaptiveSegmentationTask(adapt=['patches', 'heads'], num_classes=3)
