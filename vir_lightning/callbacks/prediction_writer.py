"""Prediction writers that never touch earlier outputs: a CSV of classes, or a new folder per run."""
import csv
import os
from collections import Counter
from pathlib import Path
from typing import List, Sequence

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from ..errors import UserError


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


def relative_paths(names: Sequence[str]) -> List[Path]:
    """Each input file's path below the inputs' common folder (``a/sub/x.png`` -> ``sub/x.png``)."""
    paths = [Path(n) for n in names]
    if len(paths) < 2:
        return [Path(p.name) for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    return [p.relative_to(root) for p in paths]


def output_stems(relative: Sequence[Path]) -> List[str]:
    """A unique output name per input: its relative path without the extension (``sub/x``), or with it
    where files share a stem in one folder (``x.png``, ``x.jpg``), so no output overwrites another."""
    stems = [str(r.with_suffix('')) for r in relative]
    taken = Counter(stems)
    return [str(r) if taken[stem] > 1 else stem for r, stem in zip(relative, stems)]


class FolderPredictionWriter(BasePredictionWriter):
    """Base of the writers: ``output_dir`` is created and checked when predict starts, before any work."""

    def __init__(self, output_dir: str, write_interval: str):
        super().__init__(write_interval=write_interval)
        self.output_dir = Path(output_dir)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != 'predict' or not trainer.is_global_zero:
            return
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            create_unused(self.output_dir, '.write-test').unlink()
        except OSError as error:
            raise UserError(
                f"cannot write predictions to '{self.output_dir}' ({error.strerror or error}): pass a writable "
                f"folder with --trainer.callbacks.output_dir (the output_dir of {type(self).__name__})") from None


class ClassificationPredictionWriter(FolderPredictionWriter):
    """``output_dir/predictions.csv`` (or predictions-1.csv, ... if one exists): image, class, score.

    Under DDP each rank writes its own file (``predictions-rank{N}.csv``).
    """

    def __init__(self, output_dir: str = 'outputs/predictions'):
        super().__init__(output_dir, write_interval='epoch')

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module, predictions, batch_indices) -> None:
        dataset = trainer.predict_dataloaders.dataset
        names = getattr(dataset, 'sample_names', None)
        stem = f'predictions-rank{trainer.global_rank}' if trainer.world_size > 1 else 'predictions'
        path = create_unused(self.output_dir, stem, '.csv')
        with open(path, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['image', 'class', 'score'])
            for batch, indices in zip(predictions, batch_indices[0] if batch_indices else []):
                for index, pred, score, ok in zip(indices, batch['preds'].tolist(), batch['scores'].tolist(),
                                                  batch['readable'].tolist()):
                    if ok:  # an unreadable file was skipped with a warning naming it
                        name = names[index] if names else index
                        writer.writerow([name, pl_module.class_names[pred], f'{score:.4f}'])
        rank_zero_info(f'wrote {path}')


class RunFolderPredictionWriter(FolderPredictionWriter):
    """Base for writers of per-image files: each predict run gets its own folder under ``output_dir``
    (``run``, ``run-1``, ...), so nothing written before is overwritten."""

    def __init__(self, output_dir: str, write_interval: str = 'batch'):
        super().__init__(output_dir, write_interval)
        self.run_dir = None

    def on_predict_start(self, trainer, pl_module) -> None:
        run_dir = str(create_unused(self.output_dir, 'run', directory=True)) if trainer.is_global_zero else None
        self.run_dir = Path(trainer.strategy.broadcast(run_dir))
        self.names = trainer.predict_dataloaders.dataset.sample_names
        self.relative = relative_paths(self.names)
        self.stems = output_stems(self.relative)

    def output_path(self, index: int, suffix: str) -> Path:
        """``run_dir/<input's relative path, no extension><suffix>``, its folder created."""
        path = self.run_dir / f'{self.stems[index]}{suffix}'
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def on_predict_end(self, trainer, pl_module) -> None:
        rank_zero_info(f'wrote predictions to {self.run_dir}')
