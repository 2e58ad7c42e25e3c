"""What AdaViT adds to a task, whatever the task: its backbone wrapped in ``AdaptiveVisionTransformer``,
usage losses toward the kept-fraction targets, the decision networks' learning-rate scale, a start from a
trained checkpoint of the plain task, and the decisions logged (kept fractions, GFLOPs per image)."""
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from lightning.pytorch.utilities import rank_zero_warn

from ..checkpoints import read_weights, state_mismatch, task_path
from ..errors import UserError
from ..models.adavit import AdaptiveVisionTransformer, Decisions, usage_loss
from .backbone import timm_model

TARGET_OPTIONS = {'patches': 'patch_target', 'heads': 'head_target', 'blocks': 'block_target'}
DENSE_DROPPED = ('head.', 'norm.', 'fc_norm.')  # what timm's features_only models prune from a classifier


def check_adaptive_options(targets: Dict[str, float], tau: float) -> None:
    """A UserError for a kept-fraction target outside [0, 1] or a decision temperature <= 0."""
    for kind, value in targets.items():
        if not 0 <= value <= 1:
            raise UserError(f"--model.{TARGET_OPTIONS[kind]} {value} is not a kept fraction: use a value in [0, 1] "
                            f"(0.5 is the paper's)")
    if not tau > 0:
        raise UserError(f"--model.tau {tau}: the decision temperature must be > 0 (the paper's is 5)")


class AdaptiveTask:
    """Mixin before a task class (``class AdaptiveXTask(AdaptiveTask, XTask)``); the task's __init__ calls
    ``adapt_backbone`` once its plain backbone is built. ``plain_task``: the class name of the checkpoints
    it starts from."""

    plain_task: str

    def adapt_backbone(self, model: nn.Module, adapt: Sequence[str], targets: Dict[str, float],
                       weights: Dict[str, float], tau: float,
                       init_checkpoint: Optional[str]) -> AdaptiveVisionTransformer:
        self.targets, self.weights = targets, weights
        if init_checkpoint is None:
            rank_zero_warn(f"AdaViT without --model.init_checkpoint: backbone and decisions train from scratch; "
                           f"the paper fine-tunes a trained model (the best checkpoint of a {self.plain_task} run)")
        try:
            return AdaptiveVisionTransformer(model, adapt=adapt, tau=tau)
        except ValueError as error:
            raise UserError(f"--model.backbone {self.hparams.backbone}: {error}") from error

    def setup(self, stage: str) -> None:
        super().setup(stage)
        path = self.hparams.init_checkpoint
        if stage == 'fit' and path and not self.trainer.ckpt_path:  # resuming restores everything itself
            self.load_init_checkpoint(path)

    def load_init_checkpoint(self, path: str) -> None:
        """The backbone's (and head's) weights from a checkpoint of the plain task (or of this one: its
        decisions are not taken) or from a timm weights file of the backbone."""
        option = '--model.init_checkpoint'
        saved = read_weights(path, option)
        inner = timm_model(self.backbone)
        own = inner.state_dict()
        head: Dict[str, Any] = {}
        if 'state_dict' in saved and task_path(saved) is not None:
            written_by = task_path(saved).rsplit('.', 1)[-1]
            if written_by not in (self.plain_task, type(self).__name__):
                raise UserError(f"{option} '{path}' is a {written_by} checkpoint; {type(self).__name__} starts from a "
                                f"{self.plain_task} checkpoint (the best of its demo run)")
            trained = saved.get('hyper_parameters', {}).get('backbone')
            if trained is not None and trained != self.hparams.backbone:
                raise UserError(f"{option} '{path}' was trained with backbone {trained}, this config builds "
                                f"{self.hparams.backbone}: set --model.backbone {trained} and its backbone_kwargs")
            state = _under(saved['state_dict'], 'backbone.')
            # the plain model inside: AdaViT's wrapper keeps it as .backbone, timm's features_only one as .model
            inside = 'backbone.' if written_by == type(self).__name__ else 'model.'
            if all(key.startswith(inside) or key.startswith('decisions.') for key in state):
                state = _under(state, inside)
            head = _under(saved['state_dict'], 'head.')
        else:
            state = saved.get('model', saved.get('state_dict', saved))
            state = {k: v for k, v in state.items() if k in own or not k.startswith(DENSE_DROPPED)}
        self._load_weights(inner, state, path, option)
        if head:
            self._load_weights(self.head, head, path, option)

    @staticmethod
    def _load_weights(module: nn.Module, state: Dict[str, Any], path: str, option: str) -> None:
        mismatch = state_mismatch(state, module.state_dict())
        if mismatch:
            raise UserError(f"{option} '{path}' does not fit this model ({mismatch}): it was trained with "
                            f"other --model.backbone_kwargs or head options (its run folder has config.yaml)")
        module.load_state_dict(state)

    def optimizer_groups(self) -> List[Dict[str, Any]]:
        """The plain task's groups, each split in two: the decision networks learn decision_lr_scale times faster."""
        decision = {id(p) for p in self.backbone.decisions.parameters()}
        groups = []
        for group in super().optimizer_groups():
            params = list(group['params'])
            rest = [p for p in params if id(p) not in decision]
            ours = [p for p in params if id(p) in decision]
            if rest:
                groups.append({**group, 'params': rest})
            if ours:
                scale = group.get('lr_scale', 1.0) * self.hparams.decision_lr_scale
                groups.append({**group, 'params': ours, 'lr_scale': scale})
        return groups

    def log_decisions(self, decisions: Sequence[Decisions], stage: str) -> Optional[torch.Tensor]:
        """Logs the kept fractions of the forwards of one step (several for sliding-window inference) and,
        outside training, the backbone's GFLOPs per image (all its windows); returns the usage loss in training."""
        training = stage == 'train'
        for kind in decisions[0].kinds():
            used = torch.stack([d.usage()[kind] for d in decisions]).mean()
            self.log(f'{stage}/usage_{kind}', used.detach(), sync_dist=not training)
        if training:
            usage = sum(usage_loss(d, self.targets, self.weights) for d in decisions) / len(decisions)
            self.log('train/usage_loss', usage)
            return usage
        macs = sum(self.backbone.macs(d).mean() for d in decisions).float()
        self.log_dict({f'{stage}/GFLOPs': 2 * macs / 1e9, f'{stage}/GMACs': macs / 1e9}, sync_dist=True)
        return None


def _under(state: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
