"""Prediction writers that never touch earlier outputs: a CSV of classes, or a new folder per run."""
import csv
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter


class ClassificationPredictionWriter(BasePredictionWriter):
    """``output_dir/predictions.csv`` (or predictions-1.csv, ... if one exists): image, class, score.

    Under DDP each rank writes its own file (suffix ``-rank{N}``).
    """

    def __init__(self, output_dir: str = 'outputs/predictions'):
        super().__init__(write_interval='epoch')
        self.output_dir = Path(output_dir)

    def _free_path(self, rank_suffix: str) -> Path:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path, n = self.output_dir / f'predictions{rank_suffix}.csv', 0
        while path.exists():
            n += 1
            path = self.output_dir / f'predictions{rank_suffix}-{n}.csv'
        return path

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module, predictions, batch_indices) -> None:
        dataset = trainer.predict_dataloaders.dataset
        names = getattr(dataset, 'sample_names', None)
        rank_suffix = f'-rank{trainer.global_rank}' if trainer.world_size > 1 else ''
        path = self._free_path(rank_suffix)
        with open(path, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['image', 'class', 'score'])
            for batch, indices in zip(predictions, batch_indices[0] if batch_indices else []):
                for index, pred, score in zip(indices, batch['preds'].tolist(), batch['scores'].tolist()):
                    writer.writerow([names[index] if names else index, pl_module.class_names[pred], f'{score:.4f}'])
        print(f'wrote {path}')


class RunFolderPredictionWriter(BasePredictionWriter):
    """Base for writers of per-image files: each predict run gets its own folder under ``output_dir``
    (``run``, ``run-1``, ...), so nothing written before is overwritten."""

    def __init__(self, output_dir: str, write_interval: str = 'batch'):
        super().__init__(write_interval=write_interval)
        self.output_dir = Path(output_dir)
        self.run_dir = None

    def on_predict_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            n, run_dir = 0, self.output_dir / 'run'
            while run_dir.exists():
                n += 1
                run_dir = self.output_dir / f'run-{n}'
            run_dir.mkdir(parents=True)
            self.run_dir = str(run_dir)
        self.run_dir = Path(trainer.strategy.broadcast(self.run_dir))
