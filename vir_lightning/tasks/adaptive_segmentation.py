"""AdaViT beyond the paper: head and block policies for semantic segmentation, every patch kept."""
from contextlib import contextmanager
from typing import Dict, Iterator, List, Literal, Optional, Tuple

import torch

from ..errors import UserError
from ..models.adavit import Decisions
from .adaptive import AdaptiveTask, check_adaptive_options
from .segmentation import SegmentationTask

DenseAdaptable = Literal['heads', 'blocks']


class AdaptiveSegmentationTask(AdaptiveTask, SegmentationTask):
    """The segmentation task with a ViR (or timm ViT) backbone whose blocks decide, per image, which heads
    they compute and whether their token mixer and MLP run (AdaViT's head and block policies). Patches
    are not dropped: every pixel needs its features. Training adds the usage losses; every validation
    logs the kept fractions and the backbone's GFLOPs per image (the head's cost does not change).

    Args:
        adapt: the decisions to learn ('heads', 'blocks').
        head_target, block_target: the kept fractions the usage losses pull toward, in [0, 1].
        head_weight, block_weight: the usage losses' weights (the paper's 2).
        tau: Gumbel-sigmoid temperature (> 0; the paper's 5).
        decision_lr_scale: the decision networks' learning rate over the backbone's.
        init_checkpoint: a vir_lightning segmentation checkpoint of the same backbone and head (``best-*.ckpt``
            of ``seg_demo.yaml``), or a timm weights file of the backbone. None: from scratch.
        **kwargs: the options of SegmentationTask (backbone, backbone_kwargs, out_indices, head, ...).
    """

    plain_task = 'SegmentationTask'

    def __init__(
            self,
            adapt: List[DenseAdaptable] = ['heads', 'blocks'],
            head_target: float = 0.5,
            block_target: float = 0.5,
            head_weight: float = 2.0,
            block_weight: float = 2.0,
            tau: float = 5.0,
            decision_lr_scale: float = 10.0,
            init_checkpoint: Optional[str] = None,
            **kwargs,
    ):
        if 'patches' in adapt:
            raise UserError("--model.adapt: a segmentation model keeps every patch (each pixel needs its "
                            "features); adapt 'heads' and 'blocks'")
        targets = {'heads': head_target, 'blocks': block_target}
        check_adaptive_options(targets, tau)
        super().__init__(**kwargs)
        features = self.backbone  # timm's features_only wrapper: the model it prunes, and the blocks it reads
        self.backbone = self.adapt_backbone(getattr(features, 'model', features), adapt, targets,
                                            {'heads': head_weight, 'blocks': block_weight}, tau, init_checkpoint)
        self.out_indices = features.out_indices
        self._seen: Optional[List[Decisions]] = None

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        maps, decisions = self.backbone.forward_intermediates_adaptive(images, self.out_indices)
        if self._seen is not None:
            self._seen.append(decisions)
        return self.head(maps)

    @contextmanager
    def collecting_decisions(self) -> Iterator[List[Decisions]]:
        """The decisions of every forward made inside (one per window of sliding-window inference)."""
        self._seen = seen = []
        try:
            yield seen
        finally:
            self._seen = None

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, masks = batch
        maps, decisions = self.backbone.forward_intermediates_adaptive(images, self.out_indices)
        logits, aux = self.head(maps)
        loss = self.segmentation_loss(logits, aux, masks)
        self.log('train/task_loss', loss)
        loss = loss + self.log_decisions([decisions], 'train')
        self.log('train/loss', loss, prog_bar=True)
        return loss

    def _evaluate(self, batch, metrics, stage: str) -> Dict[str, torch.Tensor]:
        with self.collecting_decisions() as seen:
            out = super()._evaluate(batch, metrics, stage)
        self.log_decisions(seen, stage)
        return out
