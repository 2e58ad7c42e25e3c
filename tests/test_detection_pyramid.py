import copy

import pytest
import timm
import torch
from torchvision.models.detection import FasterRCNN, RetinaNet

import vir_lightning  # noqa: F401
from vir_lightning.heads.detection import SimpleFeaturePyramid

TINY = dict(depth=2, embed_dim=32, num_heads=2, init_values=1.0)


def pyramid(**kwargs):
    backbone = timm.create_model('vir_tiny_patch16_224', features_only=True, out_indices=(1,), **TINY, **kwargs)
    return SimpleFeaturePyramid(backbone, out_channels=32)


def test_pyramid_levels_strides_and_channels():
    maps = pyramid()(torch.randn(2, 3, 128, 192))
    assert list(maps) == ['0', '1', '2', '3', 'pool']
    # stride 16 backbone -> strides 4, 8, 16, 32, 64
    assert [tuple(m.shape[-2:]) for m in maps.values()] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    assert all(m.shape[:2] == (2, 32) for m in maps.values())


@pytest.mark.parametrize('detector', [FasterRCNN, RetinaNet])
def test_torchvision_detectors_train_and_predict_on_the_pyramid(detector):
    torch.manual_seed(0)
    model = detector(pyramid(retention_mode='chunkwise', chunk_size=16), num_classes=3, min_size=128, max_size=192)
    images = [torch.rand(3, 120, 150), torch.rand(3, 128, 170)]  # padded by torchvision to a multiple of 32
    targets = [{'boxes': torch.tensor([[10., 20., 60., 90.]]), 'labels': torch.tensor([1])},
               {'boxes': torch.tensor([[30., 30., 100., 80.], [5., 5., 40., 40.]]), 'labels': torch.tensor([2, 1])}]
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.body.model.patch_embed.proj.weight.grad is not None
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and {'boxes', 'labels', 'scores'} <= set(detections[0])


def test_faster_rcnn_results_do_not_depend_on_the_first_batch():
    """torchvision's RoI pooler would infer its level scales from the first batch and keep them."""
    from vir_lightning.heads import create_detector
    torch.manual_seed(0)
    backbone = timm.create_model('vir_tiny_patch16_224', features_only=True, out_indices=(-1,), **TINY)
    detector = create_detector('faster_rcnn', backbone, num_classes=2, pyramid_channels=16,
                               box_score_thresh=0.0).eval()
    other_order = copy.deepcopy(detector)
    short, tall = torch.randn(3, 65, 128), torch.randn(3, 128, 120)  # the short one is padded to 128 x 128
    with torch.no_grad():
        detector([short])
        after_short = detector([tall])[0]['scores']
        first = other_order([tall])[0]['scores']
    assert detector.roi_heads.box_roi_pool.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    assert torch.equal(first, after_short)


def test_faster_rcnn_box_head_width_is_an_option_and_only_faster_rcnns():
    from vir_lightning.heads import create_detector
    backbone = timm.create_model('vir_tiny_patch16_224', features_only=True, out_indices=(-1,), **TINY)
    detector = create_detector('faster_rcnn', backbone, num_classes=2, pyramid_channels=16, box_head_size=64)
    assert detector.roi_heads.box_head.fc6.in_features == 16 * 7 * 7
    assert detector.roi_heads.box_head.fc7.out_features == 64
    assert detector.roi_heads.box_predictor.cls_score.out_features == 3  # 2 classes + background
    detector.train()
    losses = detector([torch.rand(3, 96, 96)], [{'boxes': torch.tensor([[10., 10., 50., 60.]]),
                                                 'labels': torch.tensor([1])}])
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match='box_head_size'):
        create_detector('retinanet', backbone, num_classes=2, pyramid_channels=16, box_head_size=64)
