"""What every task shares: the optimiser and schedule, the inference retention form, data checks."""
import math
from typing import Any, Dict, List, Optional, Sequence

import lightning as L
import torch

from ..distributed import destroy_process_group_at_exit
from ..errors import UserError
from ..models.retention import RetentionMode
from .backbone import patch_size
from .optim import Schedule, build_optimizer, build_scheduler, param_groups


class VisionTask(L.LightningModule):
    """Base LightningModule: subclasses build ``self.backbone`` and heads, and implement the steps.

    Values that describe the data (``num_classes``, class names, palette, ignore index, category
    ids) are constructor arguments that the CLI links from the DataModule, so they are saved with
    the hyperparameters and a checkpoint reloads without its data.

    Args:
        lr: peak learning rate (after warm-up).
        weight_decay: AdamW weight decay (not applied to biases, norms, position embeddings).
        layer_decay: layer-wise lr decay over the backbone blocks (None: off).
        schedule: decay after warm-up, stepped every optimizer step.
        step_milestones, step_gamma: the 'step' schedule multiplies the lr by step_gamma at these
            fractions of the run (default: ViTDet's 88.9% and 96.3%).
        warmup_steps, warmup_epochs: linear warm-up length, in optimizer steps plus epochs
            (mmseg recipes count iterations, ImageNet recipes epochs); an epoch is the trainer's
            optimizer steps per epoch, also when ``--trainer.max_steps`` ends the run.
        min_lr: learning rate at the end of the schedule.
        optimizer: a timm optimizer name ('adamw', 'lamb', 'sgd', ...).
        compile: compile the backbone in place in setup() (state_dict keys unchanged).
        inference_retention_mode: retention form of a ViR backbone outside training, e.g.
            'chunkwise' for large images (None keeps the training form).
    """

    def __init__(
            self,
            num_classes: int,
            lr: float = 1e-3,
            weight_decay: float = 0.05,
            layer_decay: Optional[float] = None,
            schedule: Schedule = 'cosine',
            step_milestones: Sequence[float] = (0.889, 0.963),
            step_gamma: float = 0.1,
            warmup_steps: int = 0,
            warmup_epochs: float = 0.0,
            min_lr: float = 1e-6,
            optimizer: str = 'adamw',
            compile: bool = False,
            inference_retention_mode: Optional[RetentionMode] = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        if num_classes < 1:
            raise UserError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = num_classes

    def setup(self, stage: str) -> None:
        destroy_process_group_at_exit()  # Lightning does it for NCCL only; gloo runs could abort at exit
        datamodule = getattr(self.trainer, 'datamodule', None)
        data_classes = getattr(datamodule, 'num_classes', None)
        if data_classes is not None and data_classes != self.num_classes:
            raise UserError(
                f"the model predicts {self.num_classes} classes but {type(datamodule).__name__} "
                f"(root={getattr(datamodule, 'root', None)!r}) has {data_classes}: use a checkpoint trained on "
                f"this data, or data with {self.num_classes} classes")
        self._check_image_size(getattr(datamodule, 'image_size', None))
        if self.hparams.get('compile') and stage == 'fit':
            self.backbone.compile()

    def _check_image_size(self, image_size: Optional[int]) -> None:
        model = getattr(self.backbone, 'model', self.backbone)
        if image_size is None or getattr(getattr(model, 'patch_embed', None), 'dynamic_img_pad', False):
            return
        patch = patch_size(self.backbone)
        if image_size % patch:
            fixed = -(-image_size // patch) * patch
            raise UserError(
                f"--data.image_size {image_size} is not a multiple of the backbone's patch size {patch}: "
                f"use e.g. {fixed}, or set model.backbone_kwargs.dynamic_img_pad: true to pad inputs")

    def _set_retention_mode(self, training: bool) -> None:
        """``inference_retention_mode`` outside training, the form the model was built with in training."""
        mode = self.hparams.get('inference_retention_mode')
        model = getattr(self.backbone, 'model', self.backbone)
        if mode is None or not hasattr(model, 'set_retention_mode'):
            return
        if not hasattr(self, '_train_retention_mode'):  # the form the model was built with
            self._train_retention_mode = model.retention_mode
        model.set_retention_mode(self._train_retention_mode if training else mode)

    def on_train_epoch_start(self) -> None:
        self._set_retention_mode(training=True)

    def on_validation_start(self) -> None:
        self._set_retention_mode(training=False)

    def on_validation_end(self) -> None:  # validation can come mid-epoch (val_check_interval)
        self._set_retention_mode(training=True)

    on_test_start = on_predict_start = on_validation_start

    def head_modules(self) -> List[torch.nn.Module]:
        """Trainable modules outside the backbone (they get the full learning rate)."""
        return [m for name, m in self.named_children() if name != 'backbone']

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch of the trainer's training data (its loader is set up if needed)."""
        trainer = self.trainer
        if trainer.train_dataloader is None:
            trainer.fit_loop.setup_data()
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            raise UserError("--model.warmup_epochs needs a training set of known length: use --model.warmup_steps")
        return max(1, math.ceil(batches / trainer.accumulate_grad_batches))

    def configure_optimizers(self) -> Dict[str, Any]:
        hp = self.hparams
        groups = param_groups(self.backbone, self.head_modules(), hp.weight_decay, hp.layer_decay)
        optimizer = build_optimizer(groups, lr=hp.lr, weight_decay=hp.weight_decay, opt=hp.optimizer)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise UserError("set --trainer.max_epochs or --trainer.max_steps: the lr schedule needs a length")
        warmup = hp.warmup_steps + (round(hp.warmup_epochs * self.steps_per_epoch()) if hp.warmup_epochs else 0)
        try:
            scheduler = build_scheduler(optimizer, hp.schedule, int(total), warmup, hp.min_lr,
                                        milestones=hp.step_milestones, gamma=hp.step_gamma)
        except ValueError as error:
            raise UserError(f"--model.step_milestones: {error}") from error
        return {'optimizer': optimizer, 'lr_scheduler': {'scheduler': scheduler, 'interval': 'step'}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step_update(num_updates=self.global_step)
