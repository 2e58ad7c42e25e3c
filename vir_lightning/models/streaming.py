"""Streaming inference of causal ViR: an image read in bands of patch rows, never held whole.

Causal 1D retention is a recurrence: everything a token reads from the tokens before it is one d x dv state per
head. So a causal ViR can take an image band by band (a band: whole rows of patches), each block carrying its
state from band to band, and give every patch the features the whole-image forward gives it (to float rounding),
with memory set by the band, not by the image: the activations of one band and 12 small states. ::

    stream = RetentionStream(model, image_size=(height, width))
    for band in bands:                    # [B, 3, rows * patch, width], top to bottom, any number of rows each
        features = stream.push(band)      # [B, C, rows, width / patch]: the final norm's output for those patches
    logits = stream.finish()              # the class token (or the patches' average) through the model's head

``stream_logits(model, image, rows)`` does this for an image tensor. Learned position embeddings are resampled to
the whole image's grid row by row (bicubic is separable), never for the whole image at once.

What is and is not exact:
* causal 1D ViR: exact, by construction (tested against the whole-image chunkwise forward);
* bidirectional 1D and 2D: a patch reads the rows below it, so no single top-to-bottom pass is exact. The exact
  way to run them on an image too large to hold is layer by layer (each block's input for the whole image on
  disk, two passes per block over the bands); what this project offers instead is tiled inference, which is
  approximate at tile borders: ``--model.inference slide`` for segmentation (mmseg's overlapping windows);
* causal 2D could stream exactly too, but its state is one d x dv matrix per column (the per-column states of
  the chunkwise 2D form), so its memory grows with the image's width: not offered yet.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .vir import VisionRetentionNetwork

__all__ = ['RetentionStream', 'stream_logits', 'check_streamable']


def check_streamable(model: torch.nn.Module) -> None:
    """A ValueError saying why ``model`` cannot stream, if it cannot."""
    if not isinstance(model, VisionRetentionNetwork):
        raise ValueError(f"streaming inference runs causal ViR backbones (vir_*); got {type(model).__name__}")
    retention = model.blocks[0].retention if len(model.blocks) else None
    if retention is not None and (retention.direction != 'causal' or retention.geometry != '1d'):
        raise ValueError(
            f"streaming inference needs causal 1D retention; this ViR is {retention.direction} {retention.geometry}, "
            f"whose patches read the rows below them, so no top-to-bottom pass is exact. Build it with "
            f"direction='causal' (and geometry='1d'), or use tiled inference (--model.inference slide) instead")


def _interpolation_weights(n_out: int, n_in: int) -> torch.Tensor:
    """[n_out, n_in]: what timm's bicubic (antialiased) position-embedding resampling does along one axis, read off
    by resampling the identity (2 wide: PyTorch's bicubic mishandles 1-wide inputs)."""
    eye = torch.eye(n_in).view(1, n_in, n_in, 1).expand(1, n_in, n_in, 2)
    return F.interpolate(eye, size=(n_out, 2), mode='bicubic', antialias=True, align_corners=False)[0, :, :, 0].T


class RetentionStream:
    """A causal 1D ViR fed an image of ``image_size`` (height, width) in bands of whole patch rows (see the module
    docstring). ``indices``: also keep the outputs of these blocks for each band (``intermediates`` after ``push``,
    NCHW, as ``forward_intermediates``) for dense heads."""

    def __init__(self, model: VisionRetentionNetwork, image_size: Tuple[int, int],
                 indices: Optional[Sequence[int]] = None):
        check_streamable(model)
        patch_h, patch_w = model.patch_size
        height, width = image_size
        if height % patch_h or width % patch_w:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {patch_h}x{patch_w}: "
                             f"crop or pad it to {height // patch_h * patch_h}x{width // patch_w * patch_w}")
        self.model, self.image_size = model, (height, width)
        self.grid = (height // patch_h, width // patch_w)
        self.indices = set(indices or ())
        self.states: List[Optional[torch.Tensor]] = [None] * len(model.blocks)
        self.rows_done, self.finished = 0, False
        self.intermediates: List[torch.Tensor] = []
        self.patch_sum: Optional[torch.Tensor] = None  # of the final norm's outputs, for average pooling
        self._pos_rows = self._position_rows()

    def _position_rows(self) -> Optional[torch.Tensor]:
        """The learned position embedding resampled along x to the grid's width, [old rows, width * C]: a band's
        rows are then one small matmul away (``_band_positions``)."""
        model = self.model
        if model.pos_embed is None:
            return None
        old_h, old_w = model.patch_embed.grid_size
        table = model.pos_embed.detach().float().view(old_h, old_w, -1)
        wx = _interpolation_weights(self.grid[1], old_w).to(table.device)
        self._wy = _interpolation_weights(self.grid[0], old_h).to(table.device)
        return torch.einsum('xj,ijc->ixc', wx, table).reshape(old_h, -1)

    def _band_positions(self, start: int, stop: int) -> Optional[torch.Tensor]:
        if self._pos_rows is None:
            return None
        if tuple(self.grid) == tuple(self.model.patch_embed.grid_size):  # no resampling, as the model itself
            return self.model.pos_embed[:, start * self.grid[1]:stop * self.grid[1]]
        rows = self._wy[start:stop] @ self._pos_rows
        return rows.view(1, (stop - start) * self.grid[1], -1).to(self.model.pos_embed.dtype)

    def _run_blocks(self, x: torch.Tensor, keep: bool, rows: int = 0) -> torch.Tensor:
        for i, block in enumerate(self.model.blocks):
            x, self.states[i] = block.step(x, self.states[i])
            if keep and i in self.indices:
                self.intermediates.append(x.reshape(x.shape[0], rows, self.grid[1], -1).permute(0, 3, 1, 2))
        return self.model.norm(x)

    @torch.no_grad()
    def push(self, band: torch.Tensor) -> torch.Tensor:
        """The next band [B, C_in, rows * patch, width] -> its patches' features [B, C, rows, width / patch]."""
        if self.finished:
            raise RuntimeError("this stream is finished; start a new RetentionStream for the next image")
        patch_h = self.model.patch_size[0]
        if band.ndim != 4 or band.shape[-1] != self.image_size[1] or band.shape[-2] % patch_h:
            raise ValueError(f"a band must be [batch, channels, rows * {patch_h}, {self.image_size[1]}] (whole patch "
                             f"rows of the {self.image_size[0]}x{self.image_size[1]} image); got {list(band.shape)}")
        rows = band.shape[-2] // patch_h
        if self.rows_done + rows > self.grid[0]:
            raise ValueError(f"the bands so far hold {self.rows_done} patch rows and this one {rows}: more than the "
                             f"image's {self.grid[0]}")
        x = self.model.patch_embed(band).flatten(1, 2)
        positions = self._band_positions(self.rows_done, self.rows_done + rows)
        if positions is not None:
            x = x + positions
        self.rows_done += rows
        self.intermediates = []
        x = self._run_blocks(self.model.pos_drop(x), keep=True, rows=rows)
        total = x.sum(1)
        self.patch_sum = total if self.patch_sum is None else self.patch_sum + total
        return x.reshape(x.shape[0], rows, self.grid[1], -1).permute(0, 3, 1, 2)

    @torch.no_grad()
    def finish(self, pre_logits: bool = False) -> torch.Tensor:
        """After the last band: the model's head on its pooled features (``pre_logits``: the pooled features)."""
        if self.rows_done != self.grid[0]:
            raise ValueError(f"the bands held {self.rows_done} of the image's {self.grid[0]} patch rows: push the rest "
                             f"before finish()")
        self.finished = True
        model = self.model
        if model.global_pool == 'token':  # the class token, last, reads every patch through the states
            pooled = self._run_blocks(model.cls_token.expand(self.patch_sum.shape[0], -1, -1), keep=False)[:, 0]
        elif model.global_pool == 'avg':
            pooled = self.patch_sum / (self.grid[0] * self.grid[1])
        else:
            raise ValueError("global_pool='' keeps every token: use push()'s features instead of finish()")
        pooled = model.head_drop(pooled)
        return pooled if pre_logits else model.head(pooled)


def stream_logits(model: VisionRetentionNetwork, images: torch.Tensor, rows: int,
                  pre_logits: bool = False) -> torch.Tensor:
    """``model(images)`` computed in bands of ``rows`` patch rows (the last band may be shorter)."""
    if not isinstance(rows, int) or rows < 1:
        raise ValueError(f"band height must be a positive number of patch rows, got {rows!r}")
    stream = RetentionStream(model, tuple(images.shape[-2:]))
    band = rows * model.patch_size[0]
    for start in range(0, images.shape[-2], band):
        stream.push(images[..., start:start + band, :])
    return stream.finish(pre_logits)

