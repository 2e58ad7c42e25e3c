"""The detection commands as a user runs them: the real tree-crown demo (fit, predict at full
resolution), the COCO configs on any COCO-format folder, and the COCO error path."""
import json

import pytest
from PIL import Image

from test_cli import run_main

TINY_DET = [
    '--trainer.max_epochs=1', '--trainer.limit_train_batches=2', '--trainer.check_val_every_n_epoch=1',
    '--trainer.log_every_n_steps=1', '--data.num_workers=0', '--data.batch_size=2',
    '--model.backbone_kwargs.depth=2', '--model.backbone_kwargs.embed_dim=32', '--model.backbone_kwargs.num_heads=2',
]


def _tags(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    return EventAccumulator(str(run_dir)).Reload().Tags()


def test_det_demo_fit_then_predict_a_whole_2299x2472_image(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', 'det_demo.yaml', *TINY_DET], capsys)
    assert code == 0, err
    data = tmp_path / 'data' / 'det_demo'
    assert 'REAL AERIAL IMAGES' in (data / 'README.txt').read_text()
    run_dir = tmp_path / 'runs' / 'det_demo' / 'version_0'
    tags = _tags(run_dir)
    assert {'train/loss', 'train/loss_classifier', 'train/loss_box_reg', 'train/loss_objectness',
            'train/loss_rpn_box_reg', 'val/mAP', 'val/mAP50', 'val/mAP75', 'val/mAP_small', 'val/mAR'} \
        <= set(tags['scalars'])
    assert 'val/boxes_truth_prediction' in tags['images']

    last = str(run_dir / 'checkpoints' / 'last.ckpt')
    full = data / 'full'
    for run in ('run', 'run-1'):  # a second predict never overwrites the first
        code, out, err = run_main(['predict', '--config', 'det_demo.yaml', *TINY_DET, '--ckpt_path', last,
                                   f'--data.predict_images={full}', '--model.detector_kwargs.box_score_thresh=0.0',
                                   '--trainer.callbacks.score_threshold=0.0'], capsys)
        assert code == 0, err
        folder = tmp_path / 'outputs' / 'det_demo' / run
        drawn = list(folder.glob('*_boxes.jpg'))
        assert len(drawn) == 1
        with Image.open(drawn[0]) as image:
            assert image.size == (2299, 2472)  # the whole image, at full resolution
        detections = json.loads((folder / 'detections.json').read_text())
        assert detections and {d['category_id'] for d in detections} == {1}
        x, y, w, h = max((d['bbox'] for d in detections), key=lambda b: b[0] + b[2])
        assert 0 <= x and x + w <= 2299 + 1e-3 and 0 <= y and y + h <= 2472 + 1e-3 and w > 0 and h > 0


@pytest.mark.parametrize('config, run_name', [('det_coco.yaml', 'det_coco_vir_b'), ('det_coco_vit.yaml', 'det_coco_vit_b')])
def test_coco_configs_train_and_evaluate_on_any_coco_folder(coco_folder, tmp_path, monkeypatch, capsys, config,
                                                             run_name):
    """The headline configs themselves (bf16-mixed kept), on CPU, pointed at a small COCO-format folder."""
    monkeypatch.chdir(tmp_path)
    backbone = ['--model.backbone_kwargs.depth=2', '--model.backbone_kwargs.embed_dim=32',
                '--model.backbone_kwargs.num_heads=2', '--model.backbone_kwargs.img_size=128']
    code, _, err = run_main([
        'fit', '--config', config, f'--data.root={coco_folder}', '--data.batch_size=2', '--data.num_workers=0',
        '--data.image_size=128', '--trainer.accelerator=cpu', '--trainer.devices=1', '--trainer.strategy=auto',
        '--trainer.sync_batchnorm=false', '--trainer.max_steps=2', '--trainer.val_check_interval=2',
        '--model.pyramid_channels=32', *backbone], capsys)
    assert code == 0, err
    checkpoints = tmp_path / 'runs' / run_name / 'version_0' / 'checkpoints'
    assert any(p.name.startswith('best-step') for p in checkpoints.iterdir())
    import torch
    hparams = torch.load(checkpoints / 'last.ckpt', map_location='cpu', weights_only=False)['hyper_parameters']
    assert hparams['category_ids'] == [3, 7] and hparams['class_names'] == ['square', 'bar']  # linked, saved

    code, _, err = run_main([
        'predict', '--config', config, f'--data.root={coco_folder}', '--data.num_workers=0', '--data.image_size=128',
        '--trainer.accelerator=cpu', '--trainer.devices=1', '--trainer.strategy=auto', '--trainer.sync_batchnorm=false',
        '--model.pyramid_channels=32', *backbone, '--model.detector_kwargs={box_score_thresh: 0.0}',
        '--ckpt_path', str(checkpoints / 'last.ckpt')], capsys)
    assert code == 0, err
    detections = json.loads((tmp_path / 'outputs' / run_name.replace('_b', '').replace('det_coco_vir', 'det_coco')
                             / 'run' / 'detections.json').read_text())
    assert {d['category_id'] for d in detections} <= {3, 7} and detections  # the dataset's own ids
    assert {d['image_id'] for d in detections} <= {1000, 1001, 1002, 1003}


@pytest.mark.parametrize('config', ['det_coco.yaml', 'det_coco_vit.yaml'])
def test_coco_missing_stops_at_once_with_directions(tmp_path, monkeypatch, capsys, config):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', config], capsys)
    assert code == 2 and 'Traceback' not in err
    assert 'instances_train2017.json' in err and 'train2017' in err
    assert '--data.root' in err and 'det_demo.yaml' in err and 'cocodataset.org' in err


def test_malformed_annotations_end_in_one_message(coco_folder, tmp_path, monkeypatch, capsys):
    (coco_folder / 'annotations' / 'instances_train2017.json').write_text('{"images": [')
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', 'det_coco.yaml', f'--data.root={coco_folder}'], capsys)
    assert code == 2 and 'Traceback' not in err
    assert 'instances_train2017.json' in err and 'not valid JSON' in err
