"""QnA-ViT (and any hierarchical timm backbone) in the three tasks: the demos by one override, the
QnA configs, the neck/pyramid chosen from the backbone's strides, and mmseg's registry."""
import pytest
import torch

from test_cli import run_main
from test_detection_cli import TINY_DET
from test_segmentation_cli import TINY_SEG_DEMO
from test_cli import TINY_DEMO

SHALLOW_QNA = ['--model.backbone_kwargs.qna_depths=[1, 1, 1, 0]', '--model.backbone_kwargs.window_depths=[0, 0, 1, 1]']
DEMOS = {
    'cls_demo.yaml': TINY_DEMO,
    'seg_demo.yaml': TINY_SEG_DEMO,
    'det_demo.yaml': TINY_DET,
}


@pytest.mark.parametrize('config', DEMOS)
def test_demos_run_with_qna_by_one_override(config, tmp_path, monkeypatch, capsys):
    """The demo's ViR settings (patch size, depth, width...) are left out with a warning naming them."""
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match='init_values.*options of another backbone family, not of qna_vit_tiny'):
        code, _, err = run_main(['fit', '--config', config, *DEMOS[config], *SHALLOW_QNA,
                                 '--model.backbone', 'qna_vit_tiny'], capsys)
    assert code == 0, err
    last = next((tmp_path / 'runs').glob('*/version_0/checkpoints/last.ckpt'))
    hparams = torch.load(last, map_location='cpu', weights_only=False)['hyper_parameters']
    assert hparams['backbone'] == 'qna_vit_tiny'


def test_imagenet_config_runs_with_qna_by_one_override(image_folder, tmp_path, monkeypatch, capsys):
    """cls_imagenet.yaml's recipe (mixup, cutmix, RandAugment, bf16 autocast on CPU) on a small folder."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main([
        'fit', '--config', 'cls_imagenet.yaml', '--model.backbone', 'qna_vit_tiny', *SHALLOW_QNA,
        f'--data.root={image_folder}', '--data.image_size=64', '--data.batch_size=4', '--data.num_workers=0',
        '--trainer.accelerator=cpu', '--trainer.devices=1', '--trainer.strategy=auto', '--trainer.max_steps=2',
        '--trainer.limit_val_batches=1'], capsys)
    assert code == 0, err
    assert any((tmp_path / 'runs').glob('*/version_0/checkpoints/last.ckpt'))


@pytest.mark.parametrize('config', ['seg_ade20k_qna.yaml', 'det_coco_qna.yaml'])
def test_qna_configs_stop_at_once_without_their_data(config, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', config], capsys)
    assert code == 2 and 'Traceback' not in err and '--data.root' in err


def test_seg_ade20k_qna_config_trains_on_any_folder_in_ade20k_layout(tmp_path, monkeypatch, capsys):
    """The headline QnA config (bf16-mixed kept), on CPU, on a small folder in ADE20K layout."""
    from vir_lightning.datamodules import SyntheticScenesDataModule
    root = tmp_path / 'ADEChallengeData2016'
    SyntheticScenesDataModule(root=str(root), num_train=4, num_val=2).prepare_data()
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main([
        'fit', '--config', 'seg_ade20k_qna.yaml', f'--data.root={root}', '--data.batch_size=2', '--data.num_workers=0',
        '--data.image_size=64', '--trainer.accelerator=cpu', '--trainer.devices=1', '--trainer.strategy=auto',
        '--trainer.sync_batchnorm=false', '--trainer.max_steps=2', '--trainer.val_check_interval=2',
        '--trainer.limit_val_batches=1', *SHALLOW_QNA, '--model.head_kwargs.channels=16',
        '--model.head_kwargs.aux_channels=8', '--model.crop_size=64', '--model.stride=48'], capsys)
    assert code == 0, err
    assert any((tmp_path / 'runs' / 'seg_ade20k_qna_t' / 'version_0' / 'checkpoints').glob('best-step*'))


def test_det_coco_qna_config_trains_on_any_coco_folder(coco_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main([
        'fit', '--config', 'det_coco_qna.yaml', f'--data.root={coco_folder}', '--data.batch_size=2',
        '--data.num_workers=0', '--data.image_size=128', '--trainer.accelerator=cpu', '--trainer.devices=1',
        '--trainer.strategy=auto', '--trainer.sync_batchnorm=false', '--trainer.max_steps=2',
        '--trainer.val_check_interval=2', '--model.pyramid_channels=32', *SHALLOW_QNA], capsys)
    assert code == 0, err
    assert any((tmp_path / 'runs' / 'det_coco_qna_t' / 'version_0' / 'checkpoints').glob('best-step*'))


def _uper(task):
    return task.head


@pytest.mark.parametrize('backbone,kwargs', [
    ('qna_vit_tiny', dict(qna_depths=(1, 1, 1, 0), window_depths=(0, 0, 1, 1))),
    ('convnext_atto', {}),
])
def test_hierarchical_backbones_skip_the_neck_and_use_torchvisions_fpn(backbone, kwargs):
    from vir_lightning.mmseg import MultiLevelNeck
    from torchvision.ops import FeaturePyramidNetwork

    from vir_lightning.tasks import DetectionTask, SegmentationTask
    seg = SegmentationTask(backbone=backbone, backbone_kwargs=kwargs, num_classes=3,
                           head_kwargs=dict(channels=16, aux_channels=8)).train()
    assert isinstance(seg.head.neck, torch.nn.Identity)
    assert seg.head.aux_head.in_index == 2 and seg.head.aux_head.in_channels == seg.backbone.feature_info.channels()[2]
    logits, aux = seg(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 3, 16, 16) and aux.shape == (2, 3, 4, 4)  # UPerHead at stride 4, aux at stride 16
    det = DetectionTask(backbone=backbone, backbone_kwargs=kwargs, num_classes=2, pyramid_channels=16,
                        box_head_size=32).eval()
    pyramid = det.detector.backbone
    assert isinstance(pyramid.fpn, FeaturePyramidNetwork) and pyramid.strides == [4, 8, 16, 32, 64]
    with torch.no_grad():
        levels = pyramid(torch.randn(1, 3, 128, 128))
        assert [tuple(v.shape[-2:]) for v in levels.values()] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
        assert len(det([torch.rand(3, 100, 130)])) == 1
    assert not isinstance(getattr(seg.head, 'neck'), MultiLevelNeck)


def test_plain_backbones_keep_the_neck_and_the_simple_pyramid():
    from vir_lightning.mmseg import MultiLevelNeck

    from conftest import TINY_VIR
    from vir_lightning.heads import SimpleFeaturePyramid
    from vir_lightning.tasks import DetectionTask, SegmentationTask
    seg = SegmentationTask(backbone='vir_tiny_patch16_224', backbone_kwargs=TINY_VIR, num_classes=3, out_indices=2,
                           head_kwargs=dict(channels=16, aux_channels=8))
    assert isinstance(seg.head.neck, MultiLevelNeck) and seg.head.aux_head.in_index == 3
    det = DetectionTask(backbone='vir_tiny_patch16_224', backbone_kwargs=TINY_VIR, num_classes=2, pyramid_channels=16)
    assert isinstance(det.detector.backbone, SimpleFeaturePyramid)


def test_neck_options_for_a_hierarchical_backbone_are_reported_as_ignored():
    from vir_lightning.tasks import SegmentationTask
    with pytest.warns(UserWarning, match='no neck and ignores them'):
        SegmentationTask(backbone='qna_vit_tiny', backbone_kwargs=dict(qna_depths=(1, 1, 1, 0)), num_classes=3,
                         head_kwargs=dict(channels=16, aux_channels=8, neck_channels=64))


def test_backbone_options_are_still_checked():
    from vir_lightning.errors import UserError
    from vir_lightning.tasks import SegmentationTask
    with pytest.raises(UserError, match="unexpected keyword argument 'qna_dept'"):
        SegmentationTask(backbone='qna_vit_tiny', backbone_kwargs=dict(qna_dept=(1, 1, 1, 0)), num_classes=3)
    with pytest.raises(UserError, match=r"out_indices.*feature index 4 is out of range \(0 to 3\)"):
        SegmentationTask(backbone='qna_vit_tiny', out_indices=[1, 3, 4, 5], num_classes=3)
    with pytest.raises(UserError, match="unknown backbone 'qna_vit_tiniest'.*qna_vit_tiny"):
        SegmentationTask(backbone='qna_vit_tiniest', num_classes=3)


def test_qna_vit_in_mmsegs_registry():
    from vir_lightning.mmseg import MODELS
    backbone = MODELS.build(dict(type='QnAViT', model_kwargs=dict(qna_depths=(1, 1, 1, 0), window_depths=(0, 0, 1, 1))))
    maps = backbone(torch.randn(1, 3, 64, 64))
    assert backbone.out_channels == [64, 128, 256, 512] and [m.shape[-1] for m in maps] == [16, 8, 4, 2]
