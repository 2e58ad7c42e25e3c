"""Object detection: a timm backbone, a feature pyramid (ViTDet's simple one or torchvision's FPN), a detector."""
import importlib.util
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..errors import UserError
from ..heads.detection import DetectorName, create_detector
from ..heads.feature_strides import has_growing_strides
from .backbone import create_backbone
from .base import VisionTask
from .detection_eval import DetectionEvaluator, MapBackend


def to_file_pixels(boxes: torch.Tensor, target: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Boxes in the transformed image's pixels -> the image file's pixels (undoes the DataModule's resize)."""
    (h0, w0), (h, w) = target['orig_size'].tolist(), target['size'].tolist()
    return boxes * boxes.new_tensor([w0 / w, h0 / h, w0 / w, h0 / h])


def detection_backbone(name: str, kwargs: Optional[Dict[str, Any]] = None) -> torch.nn.Module:
    """The features_only backbone a pyramid reads: a plain backbone's last map, a hierarchical one's last four.

    Plain or hierarchical is read from the built model's strides; a hierarchical one is then built
    again with four maps (cheap next to training; pretrained weights are read twice).
    """
    body = create_backbone(name, kwargs, features_only=True, out_indices=(-1,))
    if has_growing_strides([info['reduction'] for info in body.feature_info.info]):
        body = create_backbone(name, kwargs, features_only=True, out_indices=4)
    return body


class DetectionTask(VisionTask):
    """torchvision Faster R-CNN / RetinaNet / FCOS on a feature pyramid; COCO mAP.

    Plain backbones (ViR, ViT) feed their last map to a ViTDet simple feature pyramid; hierarchical
    ones (QnA-ViT, Swin, ConvNeXt) their last four stages to torchvision's FeaturePyramidNetwork.

    Args:
        backbone, backbone_kwargs: timm model name and ``create_model`` arguments; created with
            ``features_only=True`` and its last four maps (a timm ViT needs ``dynamic_img_size: true``
            for images of varying size).
        detector: the torchvision detector; detector_kwargs go to its torchvision constructor
            (box_score_thresh, rpn_post_nms_top_n_test, score_thresh, ...).
        pyramid_channels: channels of every pyramid level (256 in ViTDet).
        anchor_sizes: one base anchor size per level (5, fine to coarse); None: torchvision's.
        detections_per_image: most detections per image, kept by the detector and counted by mAP
            (COCO: 100; raise it for scenes with more objects).
        box_head_size: width of Faster R-CNN's box head (torchvision's and ViTDet's 1024).
        num_classes, class_names, category_ids: linked from the DataModule by the CLI (labels
            1..num_classes; category_ids[label - 1] is the dataset's id of a label, for written
            predictions; default 1..num_classes).
        map_backend: the library behind torchmetrics' MeanAveragePrecision.
    """

    task = 'detection'

    def __init__(
            self,
            backbone: str = 'vir_base_patch16_224',
            backbone_kwargs: Optional[Dict[str, Any]] = None,
            detector: DetectorName = 'faster_rcnn',
            detector_kwargs: Optional[Dict[str, Any]] = None,
            pyramid_channels: int = 256,
            anchor_sizes: Optional[Sequence[int]] = None,
            detections_per_image: int = 100,
            box_head_size: int = 1024,
            num_classes: int = 80,
            class_names: Optional[List[str]] = None,
            category_ids: Optional[List[int]] = None,
            map_backend: MapBackend = 'pycocotools',
            **kwargs,
    ):
        super().__init__(num_classes, **kwargs)
        if importlib.util.find_spec(map_backend) is None:
            raise UserError(f"--model.map_backend {map_backend} is not installed: "
                            f"pip install {map_backend.replace('_', '-')}")
        self.class_names = list(class_names) if class_names else [str(i) for i in range(1, num_classes + 1)]
        self.category_ids = list(category_ids) if category_ids else list(range(1, num_classes + 1))
        body = detection_backbone(backbone, backbone_kwargs)
        try:
            self.detector = create_detector(detector, body, num_classes, pyramid_channels, anchor_sizes,
                                            detections_per_image, box_head_size, **(detector_kwargs or {}))
        except (ValueError, TypeError) as error:
            raise UserError(f"--model.detector_kwargs / --model.anchor_sizes: {error}") from error
        self.val_evaluator = DetectionEvaluator(map_backend, detections_per_image)
        self.test_evaluator = DetectionEvaluator(map_backend, detections_per_image)

    @property
    def backbone(self) -> torch.nn.Module:
        """The timm features model inside the detector (layer decay, compile and checks work on it)."""
        return self.detector.backbone.body

    def _check_image_size(self, image_size: Optional[int]) -> None:
        """Any size works: the detector pads each batch to a multiple of its coarsest stride."""

    def forward(self, images: List[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        """Detections {boxes (xyxy, input pixels), scores, labels 1..K} per image."""
        return self.detector(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.detector(images, [{'boxes': t['boxes'], 'labels': t['labels']} for t in targets])
        loss = sum(losses.values())
        self.log_dict({f'train/{name}': value for name, value in losses.items()}, batch_size=len(images))
        self.log('train/loss', loss, prog_bar=True, batch_size=len(images))
        return loss

    def _evaluate(self, batch, evaluator: DetectionEvaluator) -> Dict[str, Any]:
        images, targets = batch
        detections = self(images)
        evaluator.update(
            [{**d, 'boxes': to_file_pixels(d['boxes'], t)} for d, t in zip(detections, targets)],
            [{**t, 'boxes': to_file_pixels(t['boxes'], t)} for t in targets])
        return {'detections': detections}

    def _log_map(self, evaluator: DetectionEvaluator, stage: str) -> None:
        figures = evaluator.compute(self.trainer.strategy)
        evaluator.reset()
        for name, value in figures.items():  # equal on every rank: syncing averages equal values
            self.log(f'{stage}/{name}', value, prog_bar=name in ('mAP', 'mAP50'), sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self.val_evaluator.reset()

    def validation_step(self, batch, batch_idx: int) -> Dict[str, Any]:
        return self._evaluate(batch, self.val_evaluator)

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_evaluator, 'val')

    def on_test_epoch_start(self) -> None:
        self.test_evaluator.reset()

    def test_step(self, batch, batch_idx: int) -> Dict[str, Any]:
        return self._evaluate(batch, self.test_evaluator)

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_evaluator, 'test')

    def predict_step(self, batch, batch_idx: int) -> List[Dict[str, torch.Tensor]]:
        """Detections in the image files' pixels, with their image ids."""
        images, targets = batch
        return [{**d, 'boxes': to_file_pixels(d['boxes'], t), 'image_id': t['image_id']}
                for d, t in zip(self(images), targets)]
