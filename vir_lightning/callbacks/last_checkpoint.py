"""``last.ckpt`` that is always the run's latest state, for ``--ckpt_path last``."""
from typing import Optional

from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """One file, ``last.ckpt``, replaced (atomically) after every epoch, or every ``every_n_train_steps``
    optimizer steps and after every validation for runs whose epochs are long, and when training ends.

    Lightning's ``save_last`` only copies the latest top-k checkpoint: beside a monitored
    best-checkpoint callback it holds the best epoch, and the epochs after it are saved nowhere.
    """

    def __init__(self, dirpath: Optional[str] = None, every_n_train_steps: Optional[int] = None):
        super().__init__(dirpath=dirpath, filename=self.CHECKPOINT_NAME_LAST, monitor=None, save_top_k=1,
                         every_n_train_steps=every_n_train_steps, enable_version_counter=False)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._every_n_train_steps:  # validation changed the state (best scores)
            self._save_last(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last(trainer)  # whatever ended the run (max_steps between N, max_time, early stopping)

    def _save_last(self, trainer) -> None:
        if trainer.state.fn == 'fit' and not (trainer.sanity_checking or trainer.fast_dev_run):
            self._save_checkpoint(trainer, self.format_checkpoint_name({}))
