"""TensorBoard from callbacks: the writer (rank 0 only), and a base for per-image validation panels."""
from typing import TYPE_CHECKING, List, Optional

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import make_grid

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


def tensorboard_writer(trainer: L.Trainer) -> Optional['SummaryWriter']:
    """The SummaryWriter of the first TensorBoardLogger, on rank 0 only (None elsewhere)."""
    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class ValidationPanelLogger(L.Callback):
    """Collects one row of panels per validation image (``panels``, by the subclass) up to
    ``num_images``, and logs them as one grid under ``tag`` at the end of the epoch (rank 0 only)."""

    tag = 'val/panels'

    def __init__(self, num_images: int = 4):
        self.num_images = num_images
        self._rows: List[torch.Tensor] = []

    def panels(self, trainer, pl_module, outputs, batch) -> List[torch.Tensor]:
        """uint8 [3, H, W] rows, one per image of the batch."""
        raise NotImplementedError

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._rows = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or tensorboard_writer(trainer) is None or len(self._rows) >= self.num_images:
            return
        self._rows += self.panels(trainer, pl_module, outputs, batch)[:self.num_images - len(self._rows)]

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not self._rows:
            return
        width = max(row.shape[2] for row in self._rows)
        height = max(row.shape[1] for row in self._rows)
        rows = [torch.nn.functional.pad(row, (0, width - row.shape[2], 0, height - row.shape[1]))
                for row in self._rows]
        writer.add_image(self.tag, make_grid(rows, nrow=1, padding=4), trainer.global_step)
