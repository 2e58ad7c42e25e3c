"""A real 2-process DDP run on CPU (gloo): it trains, and its metrics are synchronised across ranks."""
import os
import subprocess
import sys

import lightning as L
import pytest

from conftest import TINY_VIR
from vir_lightning.datamodules import ImageFolderDataModule
from vir_lightning.tasks import ClassificationTask


def _datamodule(root):
    return ImageFolderDataModule(root=str(root), batch_size=4, num_workers=0, image_size=32,
                                 scale=(0.5, 1.0), color_jitter=0.0, random_erasing=0.0)


def _trainer(tmp_path, devices, **kwargs):
    return L.Trainer(accelerator='cpu', devices=devices, strategy='ddp_spawn' if devices > 1 else 'auto',
                     logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, **kwargs)


def test_ddp_fit_trains_and_syncs_validation_metrics(image_folder, tmp_path):
    L.seed_everything(0)
    dm = _datamodule(image_folder)
    task = ClassificationTask(backbone_kwargs=TINY_VIR, num_classes=3, class_names=dm.class_names,
                              lr=3e-3, weight_decay=0.0, label_smoothing=0.0)
    before = _trainer(tmp_path, 1).validate(task, dm, verbose=False)[0]
    _trainer(tmp_path, 2, max_epochs=6, limit_val_batches=0).fit(task, dm)
    # 12 validation images split 6 + 6 across the two ranks: synchronised metrics equal one process's
    two = _trainer(tmp_path, 2).validate(task, dm, verbose=False)[0]
    one = _trainer(tmp_path, 1).validate(task, dm, verbose=False)[0]
    assert two['val/loss'] < before['val/loss']
    assert two['val/acc1'] == pytest.approx(one['val/acc1'], abs=1e-6)
    assert two['val/loss'] == pytest.approx(one['val/loss'], rel=1e-5)
    assert one['val/acc1'] > 0.6


def test_ddp_preset_composes_with_a_task_config(image_folder, tmp_path):
    """The documented `--config trainer/ddp.yaml` preset, forced onto 2 CPU processes."""
    env = {**os.environ, 'NO_ALBUMENTATIONS_UPDATE': '1'}
    args = [
        sys.executable, '-m', 'vir_lightning', 'fit', '--config', 'cls_demo.yaml', '--config', 'trainer/ddp.yaml',
        '--trainer.accelerator=cpu', '--trainer.devices=2', '--trainer.precision=32-true',
        '--trainer.max_epochs=1', '--trainer.limit_train_batches=2', '--trainer.limit_val_batches=1',
        '--model.backbone_kwargs.depth=1', '--data.num_workers=0', '--data.batch_size=8',
    ]
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'distributed_backend=gloo' in result.stderr + result.stdout
    assert (tmp_path / 'runs' / 'cls_demo' / 'version_0' / 'checkpoints' / 'last.ckpt').is_file()


def test_ddp_detection_map_counts_each_image_once(coco_folder, tmp_path):
    """3 validation images on 2 ranks: the sampler repeats one; mAP must equal one process's."""
    from conftest import write_coco
    from vir_lightning.datamodules import COCODataModule
    from vir_lightning.tasks import DetectionTask

    write_coco(coco_folder, 'val2017', 3, seed=1)
    L.seed_everything(0)
    dm = COCODataModule(root=str(coco_folder), batch_size=2, num_workers=0, image_size=96)
    task = DetectionTask(backbone='vir_tiny_patch16_224', backbone_kwargs=dict(TINY_VIR, img_size=96),
                         pyramid_channels=16, num_classes=2, detector_kwargs={'box_score_thresh': 0.0})
    _trainer(tmp_path, 2, max_steps=3, limit_val_batches=0).fit(task, dm)
    two = _trainer(tmp_path, 2).validate(task, dm, verbose=False)[0]
    one = _trainer(tmp_path, 1).validate(task, dm, verbose=False)[0]
    assert two['val/mAP50'] == pytest.approx(one['val/mAP50'], abs=1e-6)
    assert two['val/mAR'] == pytest.approx(one['val/mAR'], abs=1e-6) and one['val/mAR'] > 0


def test_a_gloo_process_group_is_destroyed_when_the_process_exits():
    """Lightning destroys only NCCL groups at exit; a live gloo group could abort a finished run at exit
    ("terminate called without an active exception"). The check below runs after our exit hook."""
    code = '''
import atexit, torch.distributed as dist
from vir_lightning.distributed import destroy_process_group_at_exit
atexit.register(lambda: print("alive at exit:", dist.is_initialized()))  # registered first: runs last
dist.init_process_group('gloo', init_method='tcp://127.0.0.1:0', rank=0, world_size=1)
destroy_process_group_at_exit()
destroy_process_group_at_exit()  # idempotent
'''
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == 'alive at exit: False'
