"""TensorBoard and file outputs for segmentation: image / ground truth / prediction overlays."""
from pathlib import Path
from typing import List

import numpy as np
import torch
from PIL import Image

from ..datamodules.images import load_rgb
from .drawing import colorize, denormalize, overlay, resize_image, resize_labels
from .panels import ValidationPanelLogger
from .prediction_writer import RunFolderPredictionWriter


class SegmentationImageLogger(ValidationPanelLogger):
    """Every validation epoch: rows of image | ground-truth overlay | prediction overlay (rank 0 only)."""

    tag = 'val/image_truth_prediction'

    def panels(self, trainer, pl_module, outputs, batch) -> List[torch.Tensor]:
        datamodule = trainer.datamodule
        images = denormalize(batch[0], datamodule.mean, datamodule.std)
        rows = []
        for image, truth, pred in zip(images[:self.num_images], batch[1], outputs['preds']):
            truth, pred = (resize_labels(m.cpu(), image.shape[-2:]) for m in (truth, pred))
            rows.append(torch.cat([image, overlay(image, truth, pl_module.palette, pl_module.num_classes),
                                   overlay(image, pred, pl_module.palette, pl_module.num_classes)], dim=2))
        return rows


class SegmentationPredictionWriter(RunFolderPredictionWriter):
    """Writes ``<name>_mask.png`` (palette colours) and ``<name>_overlay.jpg`` per image, at the image
    file's resolution, in a new folder per predict run (``<name>``: the input's relative path, see
    ``output_stems``)."""

    def __init__(self, output_dir: str = 'outputs/segmentation'):
        super().__init__(output_dir)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        datamodule = trainer.datamodule
        images = denormalize(batch[0], datamodule.mean, datamodule.std)
        readable = batch[1].get('readable', torch.ones(len(images), dtype=torch.bool))
        for index, image, pred, ok in zip(batch_indices, images, prediction['preds'].cpu(), readable):
            if not ok:  # ImageFiles warned, naming the file
                continue
            path = Path(self.names[index])
            if path.is_file():  # overlay on the original, full-resolution image
                image = torch.from_numpy(load_rgb(path).copy()).permute(2, 0, 1)
            image = resize_image(image, pred.shape[-2:])
            mask = colorize(pred, pl_module.palette, pl_module.ignore_index)
            Image.fromarray(mask.permute(1, 2, 0).numpy()).save(self.output_path(index, '_mask.png'))
            blended = overlay(image, pred, pl_module.palette, pl_module.num_classes)
            Image.fromarray(np.ascontiguousarray(blended.permute(1, 2, 0).numpy())).save(
                self.output_path(index, '_overlay.jpg'), quality=90)
