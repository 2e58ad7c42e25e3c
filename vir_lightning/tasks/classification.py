"""Image classification: a timm backbone (ViR by default), a head from ``heads``, top-1/top-5."""
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from ..errors import UserError
from ..heads import ClassificationHeadName, mlp_head
from ..models.streaming import check_streamable, stream_logits
from .backbone import create_backbone
from .base import VisionTask


class ClassificationTask(VisionTask):
    """Cross-entropy with label smoothing, optional mixup/cutmix (timm), AdamW + warm-up + cosine.

    Args:
        backbone: timm model name, e.g. 'vir_small_patch16_224'.
        backbone_kwargs: extra ``timm.create_model`` arguments (img_size, retention_mode, drop_path_rate...).
        head: 'linear' is the backbone's own timm classifier (its dropout: backbone_kwargs.drop_rate);
            'mlp' adds a tanh hidden layer (head_kwargs: hidden_features, dropout; see ``heads``).
        num_classes, class_names: linked from the DataModule by the CLI.
        label_smoothing: applied to hard targets, and inside mixup's soft targets.
        mixup_alpha, cutmix_alpha: > 0 enables timm Mixup on training batches.
        streaming_rows: predict in bands of this many patch rows, each block's retention state carried from band
            to band (causal 1D ViR only; the same predictions, with the activations of one band: see
            ``vir_lightning.models.streaming``). None: the whole image at once.
        **kwargs: optimisation options of VisionTask (lr, weight_decay, layer_decay, schedule, ...).
    """

    task = 'classification'

    def __init__(
            self,
            backbone: str = 'vir_tiny_patch16_224',
            backbone_kwargs: Optional[Dict[str, Any]] = None,
            head: ClassificationHeadName = 'linear',
            head_kwargs: Optional[Dict[str, Any]] = None,
            num_classes: int = 1000,
            class_names: Optional[List[str]] = None,
            label_smoothing: float = 0.1,
            mixup_alpha: float = 0.0,
            cutmix_alpha: float = 0.0,
            streaming_rows: Optional[int] = None,
            **kwargs,
    ):
        super().__init__(num_classes, **kwargs)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if head == 'linear':
            if head_kwargs:
                raise UserError("--model.head linear is the backbone's own timm classifier and takes no head_kwargs: "
                                "set its dropout with --model.backbone_kwargs.drop_rate, or use --model.head mlp")
            self.backbone = create_backbone(backbone, backbone_kwargs, num_classes=num_classes)
            self.head = nn.Identity()
        else:
            self.backbone = create_backbone(backbone, backbone_kwargs, num_classes=0)
            try:
                self.head = mlp_head(self.backbone.num_features, num_classes, **(head_kwargs or {}))
            except TypeError as error:
                raise UserError(f"--model.head_kwargs: {error} (mlp takes hidden_features and dropout)") from error
        self.streaming_rows = streaming_rows
        if streaming_rows is not None:
            check_streaming(self.backbone, streaming_rows)
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, label_smoothing=label_smoothing,
                num_classes=num_classes)
        self.train_criterion = SoftTargetCrossEntropy() if self.mixup else nn.CrossEntropyLoss(
            label_smoothing=label_smoothing)
        self.criterion = nn.CrossEntropyLoss()
        metrics = MetricCollection({
            'acc1': MulticlassAccuracy(num_classes, top_k=1, average='micro'),
            'acc5': MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average='micro'),
        })
        self.train_metrics = metrics.clone(prefix='train/')
        self.val_metrics = metrics.clone(prefix='val/')
        self.test_metrics = metrics.clone(prefix='test/')

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def classify(self, images: torch.Tensor, stage: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Logits and an extra training loss (none here): what AdaViT's task adds its decisions to."""
        return self(images), None

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        if self.mixup is not None and len(images) % 2 == 0:
            mixed, soft_targets = self.mixup(images, targets)
            logits, extra = self.classify(mixed, 'train')
            loss = self.train_criterion(logits, soft_targets)
        else:
            logits, extra = self.classify(images, 'train')
            loss = self.criterion(logits, targets) if self.mixup else self.train_criterion(logits, targets)
            self.train_metrics(logits, targets)
            self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        if extra is not None:
            self.log('train/task_loss', loss)
            loss = loss + extra
        self.log('train/loss', loss, prog_bar=True)
        return loss

    def _evaluate(self, batch, metrics: MetricCollection, stage: str) -> Dict[str, torch.Tensor]:
        images, targets = batch
        logits, _ = self.classify(images, stage)
        self.log(f'{stage}/loss', self.criterion(logits, targets), sync_dist=True)
        metrics(logits, targets)
        self.log_dict(metrics, prog_bar=stage == 'val')
        return {'preds': logits.argmax(dim=1)}

    def validation_step(self, batch, batch_idx: int) -> Dict[str, torch.Tensor]:
        return self._evaluate(batch, self.val_metrics, 'val')

    def test_step(self, batch, batch_idx: int) -> Dict[str, torch.Tensor]:
        return self._evaluate(batch, self.test_metrics, 'test')

    def predict_step(self, batch, batch_idx: int) -> Dict[str, torch.Tensor]:
        images = batch[0]
        logits = self(images) if self.streaming_rows is None else \
            self.head(stream_logits(self.backbone, images, self.streaming_rows))
        probs = logits.softmax(dim=1)
        scores, preds = probs.max(dim=1)
        info = batch[1] if isinstance(batch[1], dict) else {}  # image files have info, class folders labels
        readable = info.get('readable', torch.ones_like(preds, dtype=torch.bool))
        return {'preds': preds, 'scores': scores, 'readable': readable}


def check_streaming(backbone: nn.Module, rows: int) -> None:
    """A UserError naming --model.streaming_rows when ``backbone`` cannot predict in bands of ``rows`` patch rows."""
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise UserError(f"--model.streaming_rows {rows!r}: a band is a positive number of patch rows, e.g. 4")
    try:
        check_streamable(backbone)
    except ValueError as error:
        raise UserError(f"--model.streaming_rows: {error}") from None

