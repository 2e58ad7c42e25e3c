"""Semantic segmentation: a timm backbone's intermediate maps, a head from ``heads``, mIoU/mAcc/aAcc."""
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from ..errors import UserError
from ..heads import SegmentationHeadName, create_segmentation_head
from ..palette import default_palette
from .backbone import create_backbone, patch_size
from .base import VisionTask
from .segmentation_inference import slide_inference, whole_inference

InferenceMode = Literal['whole', 'slide']


class SegmentationTask(VisionTask):
    """Pixel cross-entropy (ignore index) + weighted auxiliary loss; whole or sliding-window inference.

    Args:
        backbone, backbone_kwargs: timm model name and ``create_model`` arguments; the backbone is
            created with ``features_only=True`` and ``out_indices``.
        out_indices: the blocks (plain backbones: ViR, ViT) or stages (hierarchical ones: QnA-ViT,
            Swin, ConvNeXt) whose maps feed the head, timm's way: an int n takes the last n, a list
            names them (the ViT-B recipes: [3, 5, 7, 11]).
        head: 'uper' (mmseg UPerHead + FCNHead, behind a MultiLevelNeck when all maps share one stride)
            or 'linear'; head_kwargs to its constructor.
        num_classes, class_names, palette, ignore_index: linked from the DataModule by the CLI
            (without a DataModule: class indices as names, fixed random colours, 255).
        aux_weight: weight of the auxiliary head's loss (0.4 in mmseg).
        inference: 'whole' image, or 'slide' (windows of crop_size every stride pixels, mmseg semantics).
    """

    task = 'segmentation'

    def __init__(
            self,
            backbone: str = 'vir_base_patch16_224',
            backbone_kwargs: Optional[Dict[str, Any]] = None,
            out_indices: Union[int, List[int]] = 4,
            head: SegmentationHeadName = 'uper',
            head_kwargs: Optional[Dict[str, Any]] = None,
            num_classes: int = 150,
            class_names: Optional[List[str]] = None,
            palette: Optional[List[Tuple[int, int, int]]] = None,
            ignore_index: int = 255,
            aux_weight: float = 0.4,
            inference: InferenceMode = 'whole',
            crop_size: int = 512,
            stride: int = 341,
            **kwargs,
    ):
        super().__init__(num_classes, **kwargs)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.palette = [tuple(c) for c in palette] if palette else default_palette(num_classes)
        self.ignore_index = ignore_index
        out_indices = out_indices if isinstance(out_indices, int) else tuple(out_indices)
        self.backbone = create_backbone(backbone, backbone_kwargs, features_only=True, out_indices=out_indices)
        self.patch_size = patch_size(self.backbone)
        try:
            self.head = create_segmentation_head(head, self.backbone.feature_info.channels(), num_classes, head_kwargs,
                                                 strides=self.backbone.feature_info.reduction())
        except TypeError as error:
            raise UserError(f"--model.head_kwargs: {error}") from error
        self.criterion = nn.CrossEntropyLoss(ignore_index=ignore_index)
        metrics = MetricCollection({
            'mIoU': MulticlassJaccardIndex(num_classes, average='macro', ignore_index=ignore_index),
            'mAcc': MulticlassAccuracy(num_classes, average='macro', ignore_index=ignore_index),
            'aAcc': MulticlassAccuracy(num_classes, average='micro', ignore_index=ignore_index),
        })
        self.val_metrics = metrics.clone(prefix='val/')
        self.test_metrics = metrics.clone(prefix='test/')

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, 'datamodule', None)
        data_ignore = getattr(datamodule, 'ignore_index', None)
        if data_ignore is not None and data_ignore != self.ignore_index:
            raise UserError(f"--model.ignore_index is {self.ignore_index} but the data marks ignored pixels "
                            f"with {data_ignore}: set them equal")

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Head outputs (logits, aux logits) at the head's resolution."""
        return self.head(self.backbone(images))

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        logits, _ = self(images)
        return _resize(logits, images.shape[-2:])

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Full-resolution logits [B, K, H, W] with the configured inference mode."""
        hp = self.hparams
        if hp.inference == 'slide':
            return slide_inference(self._logits, images, self.num_classes, (hp.crop_size, hp.crop_size),
                                   (hp.stride, hp.stride), self.patch_size)
        return whole_inference(self._logits, images, self.patch_size)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, masks = batch
        logits, aux = self(images)
        loss = self.segmentation_loss(logits, aux, masks)
        self.log('train/loss', loss, prog_bar=True)
        return loss

    def segmentation_loss(self, logits: torch.Tensor, aux: Optional[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        """Pixel cross-entropy of the decode head plus the weighted auxiliary one (each logged)."""
        loss_decode = self.criterion(_resize(logits, masks.shape[-2:]), masks)
        loss = loss_decode
        self.log('train/loss_decode', loss_decode)
        if aux is not None and self.hparams.aux_weight > 0:
            loss_aux = self.criterion(_resize(aux, masks.shape[-2:]), masks)
            loss = loss + self.hparams.aux_weight * loss_aux
            self.log('train/loss_aux', loss_aux)
        return loss

    def _evaluate(self, batch, metrics: MetricCollection, stage: str) -> Dict[str, torch.Tensor]:
        images, masks = batch
        logits = self.predict_logits(images)
        logits = _resize(logits, masks.shape[-2:])  # evaluate at the annotation's resolution, as mmseg
        self.log(f'{stage}/loss', self.criterion(logits, masks), sync_dist=True, batch_size=len(images))
        preds = logits.argmax(dim=1)
        metrics.update(preds, masks)
        self.log_dict(metrics, prog_bar=stage == 'val', batch_size=len(images))
        return {'preds': preds}

    def validation_step(self, batch, batch_idx: int) -> Dict[str, torch.Tensor]:
        return self._evaluate(batch, self.val_metrics, 'val')

    def test_step(self, batch, batch_idx: int) -> Dict[str, torch.Tensor]:
        return self._evaluate(batch, self.test_metrics, 'test')

    def predict_step(self, batch, batch_idx: int) -> Dict[str, torch.Tensor]:
        """Class maps at the image files' size (one image per batch, as the DataModules evaluate)."""
        images, info = batch
        logits = self.predict_logits(images)
        return {'preds': _resize(logits, info['orig_size'][0].tolist()).argmax(dim=1)}


def _resize(logits: torch.Tensor, size) -> torch.Tensor:
    """Logits bilinearly resized to ``size`` (h, w), when they are not that size already."""
    size = tuple(size)
    return logits if logits.shape[-2:] == size else \
        F.interpolate(logits, size=size, mode='bilinear', align_corners=False)
