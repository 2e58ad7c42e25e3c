"""COCO-style box mAP over a whole evaluation set, computed once, on one process.

Each process keeps the detections and targets of the images it saw, keyed by image id. At the
end they are gathered to rank 0 through the Lightning strategy, images that DistributedSampler
repeated to even out the ranks are counted once, and torchmetrics' MeanAveragePrecision
(pycocotools or faster-coco-eval) runs there; the figures are then broadcast so every rank logs
the same values. torchmetrics' own distributed mode syncs variable-length lists of tensors
across ranks, which is slow on COCO-sized sets and known to hang; this does a few object
broadcasts instead.
"""
from typing import Dict, List, Literal, Optional

import torch
from lightning.pytorch.strategies import Strategy

from ..distributed import gather_on_rank_zero

MapBackend = Literal['pycocotools', 'faster_coco_eval']

# torchmetrics key -> logged name
MAP_KEYS = {
    'map': 'mAP', 'map_50': 'mAP50', 'map_75': 'mAP75', 'map_small': 'mAP_small', 'map_medium': 'mAP_medium',
    'map_large': 'mAP_large',
}


def _cpu(sample: Dict[str, torch.Tensor], keys) -> Dict[str, torch.Tensor]:
    return {k: sample[k].detach().float().cpu() if k in ('boxes', 'scores') else sample[k].detach().cpu()
            for k in keys}


class DetectionEvaluator:
    """Accumulates per-image results; ``compute()`` returns {'mAP': ..., 'mAP50': ...} on every rank.

    Args:
        backend: 'pycocotools' or 'faster_coco_eval' (torchmetrics' MeanAveragePrecision backends).
        max_detections: detections per image that count (COCO: 100; more for crowded scenes).
            'mAR' is the recall at this many.
    """

    def __init__(self, backend: MapBackend = 'pycocotools', max_detections: int = 100):
        self.backend = backend
        self.max_detections = max_detections
        self.results: Dict[int, tuple] = {}

    def reset(self) -> None:
        self.results = {}

    def update(self, detections: List[Dict[str, torch.Tensor]], targets: List[Dict[str, torch.Tensor]]) -> None:
        """Detections {boxes, scores, labels} and targets {boxes, labels, iscrowd, image_id}, same coordinates."""
        for detection, target in zip(detections, targets):
            self.results[int(target['image_id'])] = (
                _cpu(detection, ('boxes', 'scores', 'labels')), _cpu(target, ('boxes', 'labels', 'iscrowd')))

    def compute(self, strategy: Optional[Strategy] = None) -> Dict[str, float]:
        """The figures of all processes' images (``strategy``: the trainer's, under DDP), on every rank."""
        results = gather_on_rank_zero(strategy, self.results)
        if strategy is None or strategy.world_size == 1:
            return self._map(results)
        return strategy.broadcast(self._map(results) if strategy.is_global_zero else None, src=0)

    def _map(self, results: Dict[int, tuple]) -> Dict[str, float]:
        keys = {**MAP_KEYS, f'mar_{self.max_detections}': 'mAR'}
        if not results:
            return {name: float('nan') for name in keys.values()}
        from torchmetrics.detection import MeanAveragePrecision  # imports pycocotools: only when evaluating
        metric = MeanAveragePrecision(
            box_format='xyxy', iou_type='bbox', backend=self.backend, sync_on_compute=False,
            max_detection_thresholds=[1, 10, self.max_detections], extended_summary=True)
        image_ids = sorted(results)
        metric.update([results[i][0] for i in image_ids], [results[i][1] for i in image_ids])
        values = metric.compute()
        figures = {name: float(values[key]) for key, name in keys.items()}
        # COCO's summary takes mAP at exactly 100 detections (-1 for any other limit): recompute it from
        # the precision table [IoU, recall, class, area, max detections] at our limit, as COCO does at 100
        precision = values['precision'][:, :, :, 0, -1]
        figures['mAP'] = float(precision[precision > -1].mean()) if (precision > -1).any() else -1.0
        return figures
