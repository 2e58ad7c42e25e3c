"""What every task shares: the optimiser and schedule, the inference retention form, data checks."""
import math
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, get_args

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from .. import rng_state
from ..checkpoints import TASK_KEY
from ..distributed import destroy_process_group_at_exit
from ..errors import UserError, check_choice
from ..models.retention import RETENTION_MODES, RetentionMode
from .backbone import pads_inputs, patch_size, timm_model
from .optim import Schedule, build_optimizer, build_scheduler, param_groups


NonFinite = Literal['stop', 'skip']


class NonFiniteError(UserError):
    """Training diverged: a loss or gradient is NaN or infinite."""


def check_data_kind(task: 'VisionTask', datamodule) -> None:
    """A UserError when ``datamodule`` holds data for another kind of task (e.g. masks for a classifier)."""
    data_kind = getattr(datamodule, 'task', None)
    if data_kind is not None and getattr(task, 'task', None) not in (None, data_kind):
        raise UserError(f"{type(task).__name__} trains on {task.task} data but {type(datamodule).__name__} holds "
                        f"{data_kind} data: pick a {task.task} DataModule (--data) or a {data_kind} task (--model)")


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
        on_non_finite: when the gradients of a step are NaN or infinite: 'stop' training with a message
            naming the step and the last good checkpoint, or 'skip' the step (weights unchanged, counted
            in ``train/skipped_steps``). Under '16-mixed' the GradScaler skips such steps itself.
    """

    task: str  # 'classification', 'segmentation' or 'detection': the data it takes

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
            on_non_finite: NonFinite = 'stop',
    ):
        super().__init__()
        self.save_hyperparameters()
        if num_classes < 1:
            raise UserError(f"num_classes must be at least 1, got {num_classes}")
        for option, value in (('lr', lr), ('min_lr', min_lr), ('weight_decay', weight_decay)):
            if not math.isfinite(value) or value < 0:
                raise UserError(f"--model.{option} must be a finite number of at least 0, got {value}")
        if lr == 0:
            raise UserError("--model.lr is 0: nothing would be trained; use e.g. 1e-3")
        if inference_retention_mode is not None:  # the CLI checks these Literals; Python callers get it here
            check_choice('inference_retention_mode', inference_retention_mode, RETENTION_MODES)
        check_choice('on_non_finite', on_non_finite, get_args(NonFinite))
        self.num_classes = num_classes
        self.skipped_steps = 0

    def setup(self, stage: str) -> None:
        destroy_process_group_at_exit()  # Lightning does it for NCCL only; gloo runs could abort at exit
        datamodule = getattr(self.trainer, 'datamodule', None)
        check_data_kind(self, datamodule)
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
        if image_size is None or pads_inputs(self.backbone):
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
        model = timm_model(self.backbone)
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

    def optimizer_groups(self) -> List[Dict[str, Any]]:
        """The optimizer's parameter groups: layer-decayed backbone, full-lr heads."""
        hp = self.hparams
        return param_groups(self.backbone, self.head_modules(), hp.weight_decay, hp.layer_decay)

    def configure_optimizers(self) -> Dict[str, Any]:
        hp = self.hparams
        groups = self.optimizer_groups()
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

    def on_before_optimizer_step(self, optimizer) -> None:
        """Stops or skips a step whose gradients are not finite (after DDP's all-reduce: every rank agrees)."""
        if self.trainer.precision == '16-mixed':
            return
        grads = [p.grad for group in optimizer.param_groups for p in group['params'] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        if torch.isfinite(norm):
            return
        where = f"step {self.global_step} (epoch {self.current_epoch})"
        if self.hparams.get('on_non_finite', 'stop') == 'stop':
            raise NonFiniteError(
                f"training stopped at {where}: the gradients are not finite (norm {norm.item()}), the weights "
                f"were not updated. Last good checkpoint: {self._last_checkpoint() or 'none saved yet'}. "
                f"Lower --model.lr (now {self.hparams.lr:g}), or pass --model.on_non_finite skip to skip such steps")
        optimizer.zero_grad(set_to_none=True)  # the optimizer skips parameters without gradients
        self.skipped_steps += 1
        self.log('train/skipped_steps', float(self.skipped_steps), rank_zero_only=True)

    def _last_checkpoint(self) -> Optional[str]:
        paths = [Path(p) for cb in self.trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)
                 for p in (cb.last_model_path, cb.best_model_path) if p and Path(p).is_file()]
        return str(max(paths, key=lambda p: p.stat().st_mtime)) if paths else None

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Refuses to save NaN or infinite weights; records the task (for load_task and clear mismatch
        messages), the skipped-step count and the random streams (exact resume)."""
        bad = [k for k, v in checkpoint['state_dict'].items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            raise NonFiniteError(f"not saving a checkpoint at step {self.global_step}: {len(bad)} weight tensors are "
                                 f"NaN or infinite (e.g. {bad[0]}); training diverged, lower --model.lr")
        checkpoint[TASK_KEY] = f'{type(self).__module__}.{type(self).__qualname__}'
        checkpoint['skipped_steps'] = self.skipped_steps
        checkpoint['rng_states'] = rng_state.capture()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self.skipped_steps = checkpoint.get('skipped_steps', 0)
        if 'rng_states' in checkpoint:
            rng_state.restore(checkpoint['rng_states'])
