"""TensorBoard rows of AdaViT's kept patches: per validation image, the image and what each block kept
(the paper's qualitative figure)."""
from typing import List

import torch
import torch.nn.functional as F

from .drawing import denormalize
from .panels import ValidationPanelLogger

SCALE_TO = 96  # small images (28 px digits) are enlarged to about this side, so single patches show


class KeptPatchImageLogger(ValidationPanelLogger):
    """Every validation epoch: rows of image | block 2 | block 3 | ... with each block's dropped patches
    dimmed to a quarter (rank 0 only). Works with an AdaptiveClassificationTask that adapts patches."""

    tag = 'val/kept_patches_per_block'

    def panels(self, trainer, pl_module, outputs, batch) -> List[torch.Tensor]:
        images = batch[0][:self.num_images]
        model = pl_module.backbone
        with torch.no_grad():
            _, decisions = model.forward_adaptive(images)
        if decisions.patches is None:
            return []
        datamodule = trainer.datamodule
        pictures = denormalize(images, datamodule.mean, datamodule.std)
        scale = max(1, SCALE_TO // max(pictures.shape[-2:]))
        pictures = pictures.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
        gh, gw = (side // p for side, p in zip(images.shape[-2:], model.backbone.patch_embed.patch_size))
        kept = decisions.patches[..., ~decisions.prefix].detach().cpu() > 0.5  # [B, L, gh * gw]
        kept = F.interpolate(kept.float().view(-1, 1, gh, gw), size=pictures.shape[-2:], mode='nearest')
        kept = kept.view(len(pictures), -1, 1, *pictures.shape[-2:])  # [B, L, 1, H, W]
        dimmed = (pictures[:, None].float() * (0.25 + 0.75 * kept)).to(torch.uint8)
        gap = torch.full((3, pictures.shape[-2], 2), 255, dtype=torch.uint8)
        return [torch.cat([part for panel in [picture, *blocks] for part in (panel, gap)][:-1], dim=2)
                for picture, blocks in zip(pictures, dimmed)]
