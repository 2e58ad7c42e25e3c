import pytest
import torch

from vir_lightning.errors import UserError
from vir_lightning.mmseg import ensure_mmseg_importable
from vir_lightning.tasks.segmentation_inference import slide_inference, whole_inference
from vir_lightning.tasks import SegmentationTask

TINY = dict(depth=4, embed_dim=32, num_heads=2, patch_size=8, img_size=64, init_values=1.0)


def make_task(**kwargs):
    defaults = dict(backbone='vir_tiny_patch16_224', backbone_kwargs=TINY, out_indices=(0, 1, 2, 3),
                    head_kwargs=dict(channels=16, aux_channels=8), num_classes=5)
    return SegmentationTask(**{**defaults, **kwargs})


def test_mmseg_imports_on_mmcv_lite_and_guarded_imports_still_fail_cleanly():
    ensure_mmseg_importable()
    import mmseg.models  # noqa: F401  (fails on mmcv-lite without the compatibility module)
    import mmcv.ops
    from mmcv.ops import point_sample
    assert point_sample(torch.ones(1, 2, 4, 4), torch.rand(1, 3, 2)).shape == (1, 2, 3)
    with pytest.raises(ModuleNotFoundError):  # what mmseg's `try: from mmcv.ops import X` expects
        from mmcv.ops import CrissCrossAttention  # noqa: F401
    ensure_mmseg_importable()  # idempotent
    assert mmcv.ops is __import__('sys').modules['mmcv.ops']


@pytest.mark.parametrize('geometry', ['1d', '2d'])
def test_vir_builds_inside_mmseg_encoder_decoder(geometry):
    import vir_lightning.mmseg  # noqa: F401  (registers TimmFeatures)
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    model = MODELS.build(dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], size=(64, 64)),
        backbone=dict(type='ViR', model_name='vir_tiny_patch16_224', out_indices=(1, 3),
                      model_kwargs=dict(depth=4, embed_dim=32, num_heads=2, retention_mode='chunkwise',
                                        geometry=geometry)),
        neck=dict(type='MultiLevelNeck', in_channels=[32, 32], out_channels=32, scales=[2, 1]),
        decode_head=dict(type='UPerHead', in_channels=[32, 32], in_index=[0, 1], pool_scales=(1, 2), channels=16,
                         num_classes=4, norm_cfg=dict(type='BN', requires_grad=True), align_corners=False,
                         loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
        train_cfg=dict(), test_cfg=dict(mode='whole')))
    assert model.backbone.model.model.retention_mode == 'chunkwise'
    assert model.backbone.model.model.blocks[0].retention.geometry == geometry
    assert model(torch.randn(2, 3, 64, 64), mode='tensor').shape == (2, 4, 8, 8)


def test_uper_head_is_mmseg_and_loss_includes_auxiliary():
    from mmseg.models.decode_heads import FCNHead, UPerHead
    from mmseg.models.necks import MultiLevelNeck
    task = make_task(aux_weight=0.4)
    assert isinstance(task.head.neck, MultiLevelNeck)
    assert isinstance(task.head.decode_head, UPerHead) and isinstance(task.head.aux_head, FCNHead)
    logged = {}
    task.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    images, masks = torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 64, 64))
    masks[:, :8] = 255
    loss = task.training_step((images, masks), 0)
    assert loss.item() == pytest.approx(logged['train/loss_decode'] + 0.4 * logged['train/loss_aux'], rel=1e-5)
    task.eval()
    logits, aux = task(images)
    assert logits.shape == (2, 5, 32, 32) and aux is None  # neck scale 4 on stride-8 maps: 1/2 resolution


def test_metrics_match_a_hand_computed_confusion_matrix():
    task = make_task(num_classes=4)
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 0]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 3, 0]]])
    result = task.val_metrics(pred, target)
    # valid pixels: 7. IoU: class 0 2/4, class 1 2/3, class 2 1/2, class 3 absent everywhere (excluded, as mmseg)
    assert result['val/mIoU'].item() == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert result['val/mAcc'].item() == pytest.approx((2 / 3 + 1 + 0.5) / 3)
    assert result['val/aAcc'].item() == pytest.approx(5 / 7)


def test_slide_inference_windows_follow_mmseg_and_average_overlaps():
    calls = []

    def predict(crop):
        calls.append(tuple(crop.shape[-2:]))
        return crop[:, :1].repeat(1, 3, 1, 1)  # a pointwise "model": result independent of the window

    images = torch.randn(1, 3, 100, 70)
    out = slide_inference(predict, images, 3, crop_size=(48, 48), stride=(32, 32), multiple=16)
    torch.testing.assert_close(out, images[:, :1].repeat(1, 3, 1, 1))
    # h: ceil((100-48)/32)+1 = 3 windows, w: ceil((70-48)/32)+1 = 2 windows, all full crops
    assert calls == [(48, 48)] * 6
    small = slide_inference(predict, torch.randn(1, 3, 30, 20), 3, (48, 48), (32, 32), multiple=16)
    assert small.shape == (1, 3, 30, 20) and calls[-1] == (32, 32)  # padded to the patch multiple


def test_whole_inference_pads_to_the_patch_size_and_crops_back():
    shapes = []

    def predict(x):
        shapes.append(x.shape[-2:])
        return x
    out = whole_inference(predict, torch.randn(1, 3, 60, 70), multiple=16)
    assert out.shape == (1, 3, 60, 70) and tuple(shapes[0]) == (64, 80)


def test_any_retention_form_at_inference_gives_the_same_masks():
    torch.manual_seed(0)
    task = make_task(backbone_kwargs={**TINY, 'direction': 'bidirectional'}, inference_retention_mode='chunkwise')
    task.eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        parallel = task.predict_logits(images)
        task.on_validation_start()
        assert task.backbone.model.retention_mode == 'chunkwise'
        chunkwise = task.predict_logits(images)
        task.on_validation_end()  # validation mid-epoch: training resumes in its own form
        assert task.backbone.model.retention_mode == 'auto'
    torch.testing.assert_close(chunkwise, parallel, atol=1e-4, rtol=1e-4)
    fresh = make_task(backbone_kwargs={**TINY, 'direction': 'bidirectional'}, inference_retention_mode='chunkwise')
    fresh.on_train_epoch_start()  # training before any validation (no sanity check)
    assert fresh.backbone.model.retention_mode == 'auto'


@pytest.mark.parametrize('option,choices', [('--model.inference=tiles', 'inference'), ('--model.head=segformer', 'uper')])
def test_bad_inference_mode_and_head_are_refused_by_the_cli(tmp_path, monkeypatch, capsys, option, choices):
    from test_cli import run_main
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(['fit', '--config', 'seg_demo.yaml', option], capsys)
    assert code == 2 and choices in err and 'Traceback' not in err
    assert not (tmp_path / 'data').exists()  # refused before anything was built or written
    with pytest.raises(ValueError, match='uper'):  # Python callers of the head factory get the choices too
        make_task(head='segformer')


def test_compat_does_nothing_when_a_full_mmcv_ops_is_present(monkeypatch):
    import sys
    import types
    full_ops = types.ModuleType('mmcv.ops')  # stands for a compiled mmcv's ops package
    monkeypatch.setitem(sys.modules, 'mmcv.ops', full_ops)
    ensure_mmseg_importable()
    assert sys.modules['mmcv.ops'] is full_ops


def test_layer_decay_reaches_through_the_features_only_wrapper():
    from vir_lightning.tasks.optim import param_groups
    task = make_task(layer_decay=0.5)
    groups = param_groups(task.backbone, task.head_modules(), weight_decay=0.01, layer_decay=0.5)
    scales = sorted({g.get('lr_scale', 1.0) for g in groups})
    # stem, blocks 0..3 (the final norm is pruned by features_only): 0.5^4 ... 1.0; heads at 1.0
    assert scales == pytest.approx([0.0625, 0.125, 0.25, 0.5, 1.0])
    head_params = {id(p) for p in task.head.parameters()}
    assert all(g.get('lr_scale', 1.0) == 1.0 for g in groups if any(id(p) in head_params for p in g['params']))


def test_evaluation_resizes_predictions_to_the_original_annotation():
    task = make_task()
    task.log = task.log_dict = lambda *args, **kwargs: None
    task.eval()
    images, masks = torch.randn(1, 3, 64, 96), torch.randint(0, 5, (1, 30, 45))
    with torch.no_grad():
        out = task.validation_step((images, masks), 0)
    assert out['preds'].shape == (1, 30, 45)
    assert task.val_metrics['mIoU'].confmat.sum() == 30 * 45


def test_crop_not_a_multiple_of_the_patch_is_explained():
    task = make_task()
    with pytest.raises(UserError, match='image_size 60 .* patch size 8: use e.g. 64'):
        task._check_image_size(60)


def test_importing_the_mmseg_integration_first_makes_mmseg_importable():
    import subprocess
    import sys
    code = 'import vir_lightning.mmseg, mmseg.models; from mmseg.models.decode_heads import UPerHead; print("ok")'
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr[-2000:]
