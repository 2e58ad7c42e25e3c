"""Boxes drawn on images: TensorBoard truth | prediction panels, and predict outputs (images + COCO JSON)."""
import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image

from ..datamodules.images import load_rgb
from ..distributed import gather_on_rank_zero
from .drawing import denormalize, draw_boxes, fit_within
from .panels import ValidationPanelLogger
from .prediction_writer import RunFolderPredictionWriter

TRUTH_COLOR, PREDICTION_COLOR = (0, 230, 0), (255, 40, 40)


class DetectionImageLogger(ValidationPanelLogger):
    """Every validation epoch: rows of truth (green) | prediction (red, score >= ``score_threshold``),
    scaled down to at most ``max_side`` pixels per panel."""

    tag = 'val/boxes_truth_prediction'

    def __init__(self, num_images: int = 4, score_threshold: float = 0.5, max_side: int = 800):
        super().__init__(num_images)
        self.score_threshold = score_threshold
        self.max_side = max_side

    def panels(self, trainer, pl_module, outputs, batch) -> List[torch.Tensor]:
        datamodule = trainer.datamodule
        rows = []
        for image, target, detection in zip(batch[0][:self.num_images], batch[1], outputs['detections']):
            image = denormalize(image[None], datamodule.mean, datamodule.std)[0]
            keep = detection['scores'] >= self.score_threshold
            panels = [draw_boxes(image, target['boxes'], target['labels'], pl_module.class_names, TRUTH_COLOR),
                      draw_boxes(image, detection['boxes'][keep], detection['labels'][keep],
                                 pl_module.class_names, PREDICTION_COLOR, detection['scores'][keep])]
            rows.append(fit_within(torch.cat(panels, dim=2), 2 * self.max_side))
        return rows


class DetectionPredictionWriter(RunFolderPredictionWriter):
    """Per predict run, a new folder with ``<name>_boxes.jpg`` (boxes with score >= ``score_threshold``
    drawn on the full-resolution image) and ``detections.json``: every detection in COCO results
    format (image_id, category_id with the dataset's own ids, bbox [x, y, w, h] in the file's
    pixels, score), plus the image's file_name."""

    def __init__(self, output_dir: str = 'outputs/detection', score_threshold: float = 0.5):
        super().__init__(output_dir)
        self.score_threshold = score_threshold
        self._results: Dict[int, List[dict]] = {}

    def on_predict_start(self, trainer, pl_module) -> None:
        super().on_predict_start(trainer, pl_module)
        self._results = {}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        for index, detection, info in zip(batch_indices, prediction, batch[1]):
            if not info.get('readable', True):  # ImageFiles warned, naming the file
                continue
            path = Path(self.names[index])
            boxes, scores, labels = (detection[k].float().cpu() for k in ('boxes', 'scores', 'labels'))
            self._results[int(detection['image_id'])] = [
                {'image_id': int(detection['image_id']), 'category_id': pl_module.category_ids[int(label) - 1],
                 'bbox': [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)], 'score': round(float(score), 4),
                 'file_name': str(self.relative[index])}
                for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores, labels)]
            image = torch.from_numpy(load_rgb(path).copy()).permute(2, 0, 1)
            keep = scores >= self.score_threshold
            drawn = draw_boxes(image, boxes[keep], labels[keep], pl_module.class_names, PREDICTION_COLOR,
                               scores[keep])
            Image.fromarray(np.ascontiguousarray(drawn.permute(1, 2, 0).numpy())).save(
                self.output_path(index, '_boxes.jpg'), quality=90)

    def on_predict_end(self, trainer, pl_module) -> None:
        results = gather_on_rank_zero(trainer.strategy, self._results)
        if trainer.is_global_zero:
            detections = [d for image_id in sorted(results) for d in results[image_id]]
            (self.run_dir / 'detections.json').write_text(json.dumps(detections))
            rank_zero_info(f'wrote {len(detections)} detections on {len(results)} images to {self.run_dir}')
