"""The segmentation commands as a user runs them: demo fit/validate/predict, and the ADE20K error path."""
import pytest
import torch
from PIL import Image

from test_cli import run_main

TINY_SEG_DEMO = [
    '--trainer.max_epochs=1', '--trainer.limit_train_batches=2', '--trainer.limit_val_batches=3',
    '--trainer.limit_predict_batches=2', '--trainer.log_every_n_steps=1', '--data.num_workers=0',
    '--data.num_train=16', '--data.num_val=4', '--data.batch_size=4', '--model.backbone_kwargs.depth=4',
    '--model.out_indices=[0, 1, 2, 3]',
]


def test_seg_demo_fit_then_predict_writes_masks_and_overlays(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', 'seg_demo.yaml', *TINY_SEG_DEMO], capsys)
    assert code == 0, err
    assert (tmp_path / 'data' / 'seg_demo' / 'README.txt').is_file()  # synthetic data written, and says so
    run_dir = tmp_path / 'runs' / 'seg_demo' / 'version_0'
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = EventAccumulator(str(run_dir)).Reload().Tags()
    assert {'train/loss', 'train/loss_aux', 'val/mIoU', 'val/mAcc', 'val/aAcc'} <= set(tags['scalars'])
    assert 'val/image_truth_prediction' in tags['images']

    last = str(run_dir / 'checkpoints' / 'last.ckpt')
    import torch
    from vir_lightning.datamodules.synthetic_scenes import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE
    hparams = torch.load(last, map_location='cpu', weights_only=False)['hyper_parameters']
    # every value the task takes from the data arrives by link and is saved with the checkpoint
    assert hparams['class_names'] == list(SYNTHETIC_CLASSES) and hparams['ignore_index'] == 255
    assert [tuple(c) for c in hparams['palette']] == list(SYNTHETIC_PALETTE) and hparams['num_classes'] == 7
    for run in ('run', 'run-1'):  # a second predict never overwrites the first
        code, _, err = run_main(['predict', '--config', 'seg_demo.yaml', *TINY_SEG_DEMO, '--ckpt_path', last,
                                 '--model.inference=slide', '--model.crop_size=64', '--model.stride=48'], capsys)
        assert code == 0, err
        masks = sorted((tmp_path / 'outputs' / 'seg_demo' / run).glob('*_mask.png'))
        overlays = sorted((tmp_path / 'outputs' / 'seg_demo' / run).glob('*_overlay.jpg'))
        assert len(masks) == 2 and len(overlays) == 2
        original = tmp_path / 'data' / 'seg_demo' / 'images' / 'validation' / masks[0].name.replace('_mask.png', '.jpg')
        with Image.open(masks[0]) as mask, Image.open(overlays[0]) as blended, Image.open(original) as image:
            assert mask.mode == 'RGB' and mask.size == blended.size == image.size  # full resolution


@pytest.mark.parametrize('config', ['seg_ade20k.yaml', 'seg_ade20k_vit.yaml'])
def test_ade20k_missing_stops_at_once_with_directions(tmp_path, monkeypatch, capsys, config):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', config], capsys)
    assert code == 2 and 'Traceback' not in err
    assert 'ADEChallengeData2016' in err and 'images/training' in err
    assert '--data.root' in err and 'seg_demo.yaml' in err and 'http' in err


@pytest.mark.parametrize('geometry', ['1d', '2d'])
def test_seg_ade20k_config_trains_and_validates_on_any_folder_in_ade20k_layout(tmp_path, monkeypatch, capsys, geometry):
    """The headline config itself (bf16-mixed kept), on CPU, pointed at a small folder in ADE20K layout; with
    ``--model.backbone_kwargs.geometry 2d`` its ViR runs 2D retention."""
    from vir_lightning.datamodules import SyntheticScenesDataModule
    root = tmp_path / 'ADEChallengeData2016'
    SyntheticScenesDataModule(root=str(root), num_train=6, num_val=2).prepare_data()
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main([
        'fit', '--config', 'seg_ade20k.yaml', f'--data.root={root}', '--data.batch_size=2', '--data.num_workers=0',
        '--data.image_size=64', '--trainer.accelerator=cpu', '--trainer.devices=1', '--trainer.strategy=auto',
        '--trainer.sync_batchnorm=false', '--trainer.max_steps=2', '--trainer.val_check_interval=2',
        '--trainer.limit_val_batches=2', '--model.backbone_kwargs.img_size=64', '--model.backbone_kwargs.depth=4',
        '--model.backbone_kwargs.embed_dim=32', '--model.backbone_kwargs.num_heads=2',
        '--model.out_indices=[0, 1, 2, 3]',
        '--model.head_kwargs.channels=16', '--model.head_kwargs.aux_channels=8', '--model.crop_size=64',
        '--model.stride=48', '--model.backbone_kwargs.geometry', geometry], capsys)
    assert code == 0, err
    metrics = (tmp_path / 'runs' / 'seg_ade20k_vir_b' / 'version_0' / 'checkpoints')
    assert any(p.name.startswith('best-step') for p in metrics.iterdir())
    last = torch.load(metrics / 'last.ckpt', map_location='cpu', weights_only=False)
    assert last['hyper_parameters']['backbone_kwargs']['geometry'] == geometry
