"""TensorBoard and file outputs for segmentation: image / ground truth / prediction overlays."""
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_segmentation_masks

from datamodules.images import load_rgb
from .classification_images import denormalize
from .panels import ValidationPanelLogger
from .prediction_writer import RunFolderPredictionWriter


def colorize(mask: torch.Tensor, palette: Sequence[Tuple[int, int, int]], ignore_index: int = 255) -> torch.Tensor:
    """[H, W] class indices -> [3, H, W] uint8 colours (ignored pixels black)."""
    table = torch.zeros((256, 3), dtype=torch.uint8)
    table[:len(palette)] = torch.tensor(palette, dtype=torch.uint8)
    table[ignore_index] = 0
    return table[mask.long().clamp(0, 255).cpu()].permute(2, 0, 1)


def overlay(image: torch.Tensor, mask: torch.Tensor, palette, num_classes: int, alpha: float = 0.5) -> torch.Tensor:
    """uint8 image [3, H, W] with the classes of ``mask`` blended in (ignored pixels left as they are)."""
    present = [c for c in mask.unique().tolist() if c < num_classes]
    if not present:
        return image
    masks = torch.stack([mask == c for c in present]).cpu()
    return draw_segmentation_masks(image.cpu(), masks, alpha=alpha, colors=[tuple(palette[c]) for c in present])


def _nearest(mask: torch.Tensor, size) -> torch.Tensor:
    """A label map resized (nearest) to an image's size, for drawing."""
    if mask.shape[-2:] == tuple(size):
        return mask
    return torch.nn.functional.interpolate(mask[None, None].float(), size=tuple(size), mode='nearest')[0, 0].long()


def _resize_image(image: torch.Tensor, size) -> torch.Tensor:
    if image.shape[-2:] == tuple(size):
        return image
    resized = torch.nn.functional.interpolate(image[None].float(), size=tuple(size), mode='bilinear',
                                              align_corners=False)
    return resized[0].round().clamp(0, 255).to(torch.uint8)


class SegmentationImageLogger(ValidationPanelLogger):
    """Every validation epoch: rows of image | ground-truth overlay | prediction overlay (rank 0 only)."""

    tag = 'val/image_truth_prediction'

    def panels(self, trainer, pl_module, outputs, batch) -> List[torch.Tensor]:
        datamodule = trainer.datamodule
        images = (denormalize(batch[0], datamodule.mean, datamodule.std) * 255).to(torch.uint8)
        rows = []
        for image, truth, pred in zip(images[:self.num_images], batch[1], outputs['preds']):
            truth, pred = (_nearest(m, image.shape[-2:]) for m in (truth, pred))
            rows.append(torch.cat([image.cpu(), overlay(image, truth, pl_module.palette, pl_module.num_classes),
                                   overlay(image, pred, pl_module.palette, pl_module.num_classes)], dim=2))
        return rows


class SegmentationPredictionWriter(RunFolderPredictionWriter):
    """Writes ``<name>_mask.png`` (palette colours) and ``<name>_overlay.jpg`` per image, in a new
    folder per predict run."""

    def __init__(self, output_dir: str = 'outputs/segmentation'):
        super().__init__(output_dir)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        dataset = trainer.predict_dataloaders.dataset
        names = getattr(dataset, 'sample_names', None)
        datamodule = trainer.datamodule
        images = (denormalize(batch[0], datamodule.mean, datamodule.std) * 255).to(torch.uint8)
        for index, image, pred in zip(batch_indices, images, prediction['preds']):
            stem = Path(names[index]).stem if names else f'{index:06d}'
            if names and Path(names[index]).is_file():  # overlay on the original, full-resolution image
                image = torch.from_numpy(load_rgb(names[index]).copy()).permute(2, 0, 1)
            image = _resize_image(image, pred.shape[-2:])
            mask = colorize(pred, pl_module.palette, pl_module.ignore_index)
            Image.fromarray(mask.permute(1, 2, 0).numpy()).save(self.run_dir / f'{stem}_mask.png')
            blended = overlay(image, pred, pl_module.palette, pl_module.num_classes)
            Image.fromarray(np.ascontiguousarray(blended.permute(1, 2, 0).numpy())).save(
                self.run_dir / f'{stem}_overlay.jpg', quality=90)

    def on_predict_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            print(f'wrote masks and overlays to {self.run_dir}')
