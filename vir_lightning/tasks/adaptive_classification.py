"""AdaViT fine-tuning: the classification task with its backbone wrapped in ``AdaptiveVisionTransformer``."""
from typing import Any, Dict, List, Optional, Tuple

import torch
from lightning.pytorch.utilities import rank_zero_warn

from ..checkpoints import read_weights, state_mismatch, task_path
from ..errors import UserError
from ..models.adavit import ADAPTABLE, Adaptable, AdaptiveVisionTransformer, usage_loss
from .backbone import timm_model
from .classification import ClassificationTask


class AdaptiveClassificationTask(ClassificationTask):
    """Cross-entropy plus AdaViT's usage losses; every validation logs the kept fractions of patches, heads
    and blocks and the GFLOPs per image (torch.utils.flop_counter's convention, a multiply-add counts 2;
    ``val/GMACs`` beside it is the papers' unit).

    Args:
        adapt: the decisions to learn ('patches', 'heads', 'blocks').
        patch_target, head_target, block_target: the kept fractions the usage losses pull toward, in [0, 1].
        patch_weight, head_weight, block_weight: the usage losses' weights (the paper's 2).
        tau: Gumbel-sigmoid temperature (> 0; the paper's 5).
        decision_lr_scale: the decision networks' learning rate over the backbone's (as the official
            code's --ada-lr-scaling): they start at "keep everything" and must move within a short fine-tune.
        init_checkpoint: weights to start from: a vir_lightning classification checkpoint of the same
            backbone (``best-*.ckpt`` of ``cls_demo.yaml``) or a timm weights file of it. None: from scratch.
        **kwargs: the options of ClassificationTask (backbone, backbone_kwargs, lr, ...).
    """

    def __init__(
            self,
            adapt: List[Adaptable] = list(ADAPTABLE),
            patch_target: float = 0.5,
            head_target: float = 0.5,
            block_target: float = 0.5,
            patch_weight: float = 2.0,
            head_weight: float = 2.0,
            block_weight: float = 2.0,
            tau: float = 5.0,
            decision_lr_scale: float = 10.0,
            init_checkpoint: Optional[str] = None,
            **kwargs,
    ):
        for option, value in (('patch_target', patch_target), ('head_target', head_target),
                              ('block_target', block_target)):
            if not 0 <= value <= 1:
                raise UserError(f"--model.{option} {value} is not a kept fraction: use a value in [0, 1] "
                                f"(0.5 is the paper's)")
        if not tau > 0:
            raise UserError(f"--model.tau {tau}: the decision temperature must be > 0 (the paper's is 5)")
        super().__init__(**kwargs)
        try:
            self.backbone = AdaptiveVisionTransformer(self.backbone, adapt=adapt, tau=tau)
        except ValueError as error:
            raise UserError(f"--model.backbone {self.hparams.backbone}: {error}") from error
        self.targets = {'patches': patch_target, 'heads': head_target, 'blocks': block_target}
        self.weights = {'patches': patch_weight, 'heads': head_weight, 'blocks': block_weight}
        if init_checkpoint is None:
            rank_zero_warn("AdaViT without --model.init_checkpoint: backbone and decisions train from scratch; "
                           "the paper fine-tunes a trained model (e.g. the best checkpoint of cls_demo.yaml)")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        path = self.hparams.init_checkpoint
        if stage == 'fit' and path and not self.trainer.ckpt_path:  # resuming restores everything itself
            self.load_init_checkpoint(path)

    def load_init_checkpoint(self, path: str) -> None:
        """The backbone's (and head's) weights from a classification checkpoint or a timm weights file."""
        option = '--model.init_checkpoint'
        saved = read_weights(path, option)
        inner = timm_model(self.backbone)
        if 'state_dict' in saved and task_path(saved) is not None:
            written_by = task_path(saved).rsplit('.', 1)[-1]
            if written_by not in ('ClassificationTask', type(self).__name__):
                raise UserError(f"{option} '{path}' is a {written_by} checkpoint; AdaViT starts from a "
                                f"ClassificationTask checkpoint (e.g. the best of cls_demo.yaml)")
            trained = saved.get('hyper_parameters', {}).get('backbone')
            if trained is not None and trained != self.hparams.backbone:
                raise UserError(f"{option} '{path}' was trained with backbone {trained}, this config builds "
                                f"{self.hparams.backbone}: set --model.backbone {trained} and its backbone_kwargs")
            state = {k[len('backbone.'):]: v for k, v in saved['state_dict'].items() if k.startswith('backbone.')}
            if written_by == type(self).__name__:  # an AdaViT checkpoint: backbone and decisions
                state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
            head = {k[len('head.'):]: v for k, v in saved['state_dict'].items() if k.startswith('head.')}
        else:
            state, head = saved.get('model', saved.get('state_dict', saved)), {}
        self._load(inner, state, path, option)
        if head:
            self._load(self.head, head, path, option)

    @staticmethod
    def _load(module: torch.nn.Module, state: Dict[str, Any], path: str, option: str) -> None:
        mismatch = state_mismatch(state, module.state_dict())
        if mismatch:
            raise UserError(f"{option} '{path}' does not fit this backbone ({mismatch}): it was trained "
                            f"with other --model.backbone_kwargs (its run folder has config.yaml)")
        module.load_state_dict(state)

    def optimizer_groups(self) -> List[Dict[str, Any]]:
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

    def classify(self, images: torch.Tensor, stage: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Logits and the usage loss; the kept fractions (and, outside training, GFLOPs per image) logged."""
        features, decisions = self.backbone.forward_adaptive(images)
        logits = self.head(self.backbone.forward_head(features))
        training = stage == 'train'
        for kind, used in decisions.usage().items():
            self.log(f'{stage}/usage_{kind}', used.detach(), sync_dist=not training)
        if training:
            usage = usage_loss(decisions, self.targets, self.weights)
            self.log('train/usage_loss', usage)
            return logits, usage
        macs = self.backbone.macs(decisions).mean().float()
        self.log_dict({f'{stage}/GFLOPs': 2 * macs / 1e9, f'{stage}/GMACs': macs / 1e9}, sync_dist=True)
        return logits, None
