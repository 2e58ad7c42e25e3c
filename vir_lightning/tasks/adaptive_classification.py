"""AdaViT fine-tuning: the classification task with its backbone wrapped in ``AdaptiveVisionTransformer``."""
from typing import List, Optional, Tuple

import torch

from ..models.adavit import ADAPTABLE, Adaptable
from .adaptive import AdaptiveTask, check_adaptive_options
from .classification import ClassificationTask


class AdaptiveClassificationTask(AdaptiveTask, ClassificationTask):
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

    plain_task = 'ClassificationTask'

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
        targets = {'patches': patch_target, 'heads': head_target, 'blocks': block_target}
        check_adaptive_options(targets, tau)
        super().__init__(**kwargs)
        self.backbone = self.adapt_backbone(self.backbone, adapt, targets, {
            'patches': patch_weight, 'heads': head_weight, 'blocks': block_weight}, tau, init_checkpoint)

    def classify(self, images: torch.Tensor, stage: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Logits and the usage loss; the kept fractions (and, outside training, GFLOPs per image) logged."""
        features, decisions = self.backbone.forward_adaptive(images)
        return self.head(self.backbone.forward_head(features)), self.log_decisions([decisions], stage)
