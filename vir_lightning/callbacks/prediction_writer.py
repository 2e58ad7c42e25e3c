"""Prediction writers that never touch earlier outputs: a CSV of classes, or a new folder per run."""
import csv
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info


def create_unused(folder: Path, stem: str, suffix: str = '', directory: bool = False) -> Path:
    """Create and return ``folder/stem+suffix``, or ``stem-1``, ``stem-2``, ... for the first name not taken.

    Created exclusively (``mkdir`` without exist_ok, or open mode 'x'), so two runs writing at once
    can never pick the same name and nothing already there is overwritten.
    """
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        path = folder / f"{stem}{f'-{n}' if n else ''}{suffix}"
        try:
            if directory:
                path.mkdir()
            else:
                path.open('x').close()
            return path
        except FileExistsError:
            n += 1


class ClassificationPredictionWriter(BasePredictionWriter):
    """``output_dir/predictions.csv`` (or predictions-1.csv, ... if one exists): image, class, score.

    Under DDP each rank writes its own file (``predictions-rank{N}.csv``).
    """

    def __init__(self, output_dir: str = 'outputs/predictions'):
        super().__init__(write_interval='epoch')
        self.output_dir = Path(output_dir)

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module, predictions, batch_indices) -> None:
        dataset = trainer.predict_dataloaders.dataset
        names = getattr(dataset, 'sample_names', None)
        stem = f'predictions-rank{trainer.global_rank}' if trainer.world_size > 1 else 'predictions'
        path = create_unused(self.output_dir, stem, '.csv')
        with open(path, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['image', 'class', 'score'])
            for batch, indices in zip(predictions, batch_indices[0] if batch_indices else []):
                for index, pred, score in zip(indices, batch['preds'].tolist(), batch['scores'].tolist()):
                    writer.writerow([names[index] if names else index, pl_module.class_names[pred], f'{score:.4f}'])
        rank_zero_info(f'wrote {path}')


class RunFolderPredictionWriter(BasePredictionWriter):
    """Base for writers of per-image files: each predict run gets its own folder under ``output_dir``
    (``run``, ``run-1``, ...), so nothing written before is overwritten."""

    def __init__(self, output_dir: str, write_interval: str = 'batch'):
        super().__init__(write_interval=write_interval)
        self.output_dir = Path(output_dir)
        self.run_dir = None

    def on_predict_start(self, trainer, pl_module) -> None:
        run_dir = str(create_unused(self.output_dir, 'run', directory=True)) if trainer.is_global_zero else None
        self.run_dir = Path(trainer.strategy.broadcast(run_dir))

    def on_predict_end(self, trainer, pl_module) -> None:
        rank_zero_info(f'wrote predictions to {self.run_dir}')
