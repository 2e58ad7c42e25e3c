"""TensorBoard and file outputs for segmentation: image / ground truth / prediction overlays."""
from pathlib import Path
from typing import List, Sequence, Tuple

import lightning as L
import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_segmentation_masks, make_grid

from datamodules.images import load_rgb
from .classification_images import denormalize, tensorboard_writer
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


class SegmentationImageLogger(L.Callback):
    """Every validation epoch: rows of image | ground-truth overlay | prediction overlay (rank 0 only)."""

    def __init__(self, num_images: int = 4):
        self.num_images = num_images
        self._rows: List[torch.Tensor] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._rows = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or tensorboard_writer(trainer) is None or len(self._rows) >= self.num_images:
            return
        datamodule = trainer.datamodule
        images = (denormalize(batch[0], datamodule.mean, datamodule.std) * 255).to(torch.uint8)
        for image, truth, pred in zip(images, batch[1], outputs['preds']):
            if len(self._rows) >= self.num_images:
                break
            truth, pred = (_nearest(m, image.shape[-2:]) for m in (truth, pred))
            panels = [image.cpu(), overlay(image, truth, pl_module.palette, pl_module.num_classes),
                      overlay(image, pred, pl_module.palette, pl_module.num_classes)]
            self._rows.append(torch.cat(panels, dim=2))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not self._rows:
            return
        width = max(row.shape[2] for row in self._rows)
        rows = [torch.nn.functional.pad(row, (0, width - row.shape[2])) for row in self._rows]
        height = max(row.shape[1] for row in rows)
        rows = [torch.nn.functional.pad(row, (0, 0, 0, height - row.shape[1])) for row in rows]
        writer.add_image('val/image_truth_prediction', make_grid(rows, nrow=1, padding=4), trainer.global_step)


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
