"""DetectionTask and its evaluation: mAP against hand-computed cases, DDP gathering, learning, precision."""
import lightning as L
import pytest
import torch

from vir_lightning.datamodules import COCODataModule
from vir_lightning.tasks.detection_eval import DetectionEvaluator
from vir_lightning.tasks.optim import build_scheduler, param_groups
from vir_lightning.tasks import DetectionTask

TINY_BACKBONE = dict(depth=2, embed_dim=64, num_heads=2, patch_size=8, init_values=1.0)


def task(detector='faster_rcnn', **kwargs):
    return DetectionTask(backbone='vir_tiny_patch16_224', backbone_kwargs=TINY_BACKBONE, detector=detector,
                         pyramid_channels=32, num_classes=2, class_names=['square', 'bar'], **kwargs)


def _box(x1, y1, x2, y2):
    return torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32)


def _sample(image_id, box, label=1, score=0.9):
    detection = {'boxes': box, 'scores': torch.tensor([score]), 'labels': torch.tensor([label])}
    target = {'boxes': _box(0, 0, 10, 10), 'labels': torch.tensor([1]), 'iscrowd': torch.tensor([0]),
              'image_id': torch.tensor(image_id)}
    return detection, target


def test_map_of_hand_computed_cases():
    evaluator = DetectionEvaluator()
    evaluator.update(*map(list, zip(_sample(1, _box(0, 0, 10, 10)))))
    assert evaluator.compute()['mAP'] == pytest.approx(1.0)
    # IoU of [0, 0, 10, 7.8] with [0, 0, 10, 10] is 0.78: a hit at thresholds 0.50..0.75 (6 of 10) only
    evaluator.reset()
    evaluator.update(*map(list, zip(_sample(1, _box(0, 0, 10, 7.8)))))
    figures = evaluator.compute()
    assert figures['mAP50'] == pytest.approx(1.0) and figures['mAP75'] == pytest.approx(1.0)
    assert figures['mAP'] == pytest.approx(0.6)
    # the wrong class finds nothing
    evaluator.reset()
    evaluator.update(*map(list, zip(_sample(1, _box(0, 0, 10, 10), label=2))))
    assert evaluator.compute()['mAP50'] == pytest.approx(0.0)


def test_an_image_seen_twice_counts_once():
    evaluator = DetectionEvaluator()
    hit, miss = _sample(1, _box(0, 0, 10, 10)), _sample(2, _box(50, 50, 60, 60))
    evaluator.update([hit[0], miss[0]], [hit[1], miss[1]])
    once = evaluator.compute()
    evaluator.update([hit[0]], [hit[1]])  # as DistributedSampler's padding repeats an image
    assert evaluator.compute() == once and len(evaluator.results) == 2


def _samples():
    return [_sample(1, _box(0, 0, 10, 10)), _sample(2, _box(0, 0, 10, 7.8)), _sample(3, _box(40, 40, 50, 50))]


def _ddp_worker(fabric):
    samples = _samples()
    mine = [samples[0], samples[2]] if fabric.global_rank == 0 else [samples[1], samples[0]]  # image 1 on both
    evaluator = DetectionEvaluator()
    evaluator.update([d for d, _ in mine], [t for _, t in mine])
    figures = evaluator.compute(fabric.strategy)
    single = DetectionEvaluator()
    single.update(*map(list, zip(*samples)))
    assert figures == single.compute(), (fabric.global_rank, figures)
    return figures


def test_ddp_evaluation_gathers_once_and_every_rank_gets_the_figures():
    """Two gloo processes through a Lightning strategy: every rank gets the one-process figures."""
    from lightning.fabric import Fabric
    fabric = Fabric(accelerator='cpu', devices=2, strategy='ddp_spawn')
    figures = fabric.launch(_ddp_worker)  # a failed assertion on either rank fails the launch
    assert 0 < figures['mAP50'] < 1  # a hit, a partial hit and a miss


def test_every_parameter_is_optimised_exactly_once_with_layer_decay():
    model = task(layer_decay=0.7)
    groups = param_groups(model.backbone, model.head_modules(), 0.05, 0.7)
    ids = [id(p) for g in groups for p in g['params']]
    assert len(ids) == len(set(ids)) == len([p for p in model.parameters() if p.requires_grad])
    scales = {g.get('lr_scale', 1.0) for g in groups}
    assert min(scales) < 0.7 and max(scales) == 1.0  # early blocks decayed, heads at the full lr


def test_step_schedule_drops_the_lr_at_its_milestones():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = build_scheduler(optimizer, 'step', total_steps=100, warmup_steps=10, min_lr=0.0,
                                milestones=(0.5, 0.8), gamma=0.1)
    lrs = {}
    for step in (5, 10, 49, 50, 79, 80, 99):
        scheduler.step_update(step)
        lrs[step] = optimizer.param_groups[0]['lr']
    assert lrs[5] < 1.0 and lrs[10] == pytest.approx(1.0) and lrs[49] == pytest.approx(1.0)
    assert lrs[50] == pytest.approx(0.1) and lrs[79] == pytest.approx(0.1) and lrs[80] == pytest.approx(0.01)


@pytest.mark.parametrize('detector', ['faster_rcnn', 'retinanet', 'fcos'])
def test_each_detector_learns_a_fixed_batch(coco_folder, detector):
    L.seed_everything(0)
    dm = COCODataModule(root=str(coco_folder), batch_size=4, num_workers=0, image_size=128, hflip=0.0)
    dm.setup('fit')
    images, targets = next(iter(dm.train_dataloader()))
    model = task(detector)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss = sum(model.detector(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.7 * losses[0]


def test_bf16_autocast_keeps_boxes_in_float32(coco_folder):
    dm = COCODataModule(root=str(coco_folder), batch_size=2, num_workers=0, image_size=128)
    dm.setup('validate')
    images = [dm.val_set[i][0] for i in range(2)]
    model = task(detector_kwargs={'box_score_thresh': 0.0}).eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        detections = model(images)
    assert detections[0]['boxes'].dtype == torch.float32 and len(detections[0]['boxes'])
    assert detections[0]['boxes'][:, 2:].max() <= 128


def test_chunkwise_inference_gives_the_training_forms_detections(coco_folder):
    dm = COCODataModule(root=str(coco_folder), batch_size=2, num_workers=0, image_size=128)
    dm.setup('validate')
    images = [dm.val_set[0][0]]
    model = task(detector_kwargs={'box_score_thresh': 0.0}, inference_retention_mode='chunkwise').eval()
    with torch.no_grad():
        parallel = model(images)[0]
        model.backbone.model.set_retention_mode('chunkwise', chunk_size=16)
        chunkwise = model(images)[0]
    assert torch.allclose(parallel['boxes'], chunkwise['boxes'], atol=1e-3)
    assert torch.allclose(parallel['scores'], chunkwise['scores'], atol=1e-4)


def test_map_at_a_raised_detection_limit_matches_coco_at_100():
    """With at most 100 detections the limit changes nothing: mAP must equal COCO's own summary."""
    samples = [_sample(1, _box(0, 0, 10, 10)), _sample(2, _box(0, 0, 10, 7.8)), _sample(3, _box(40, 40, 50, 50))]
    figures = {}
    for limit in (100, 500):
        evaluator = DetectionEvaluator(max_detections=limit)
        evaluator.update([d for d, _ in samples], [t for _, t in samples])
        figures[limit] = evaluator.compute()
    assert figures[100] == figures[500] and figures[500]['mAP'] == pytest.approx((1 + 0.6 + 0) / 3, abs=0.01)
