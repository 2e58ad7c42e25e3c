"""Vision Retention Networks (ViR), arXiv 2310.19731, as timm models.

A ViT whose self-attention is replaced by multi-head retention (see ``retention.py``): patches in
raster order plus a class token appended LAST, so under causal retention the class token reads
every patch and no patch reads the class token. Learned absolute position embeddings on patches
only, pre-LN blocks with LayerScale, MLP ratio 4, final LayerNorm.

Implementation choices beyond the paper:
* a per-head, per-token normalisation of the retention output (as RetNet's GroupNorm), so the
  output scale does not depend on position or decay; being per token it keeps the three
  retention forms exactly equal;
* ``direction='bidirectional'``: every token reads every token with decay gamma^|n-m|, computed
  exactly (not the flipped-copy concatenation of the reviewer release);
* ``geometry='2d'``: decay by distance on the patch grid, gamma^(|dy| + |dx|), in parallel and linear-cost
  forms (``retention_2d.py``); the class token then reads every token undecayed and no patch reads it;
* causal 1D ViR streams: ``Retention.step`` / ``RetentionBlock.step`` carry the state across bands of an
  image read piece by piece (``streaming.py``);
* no softmax anywhere: the released code's softmax-after-mask defect is not reproduced.

Weights: none are published; ``checkpoint_filter_fn`` converts timm ViT checkpoints of the same
width so ViR can start from them, e.g.
``timm.create_model('vir_base_patch16_224', pretrained=True, pretrained_cfg_overlay=dict(file='vit_b.pth'))``.
"""
import logging
import math
from functools import partial
from typing import Dict, List, Literal, Optional, Set, Tuple, Union, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath, LayerScale, Mlp, PatchEmbed, calculate_drop_path_rates, register_notrace_function,
    register_notrace_module, resample_abs_pos_embed, resample_patch_embed, trunc_normal_,
)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint, named_apply
from timm.models.vision_transformer import init_weights_vit_timm

from ..errors import check_choice
from .retention import (
    DecaySchedule, Direction, Kernel, RetentionMode, cached_parallel_decay, causal_retention_step, check_retention,
    chunk_padding, decay_dtype, decay_schedule, resolve_mode, retention, retention_parallel,
)
from .retention_2d import Geometry, Grid, check_geometry, read_all, retention_2d, tile_side

__all__ = ['VisionRetentionNetwork', 'Retention', 'RetentionBlock']

_logger = logging.getLogger(__name__)

PosEmbed = Literal['learn', 'none']
GlobalPool = Literal['', 'token', 'avg']
POS_EMBEDS = get_args(PosEmbed)
MLP_TOKENS_AT_ONCE = 2048  # inference on more tokens runs the MLP in slices of this many
GLOBAL_POOLS = get_args(GlobalPool)


@register_notrace_module  # FX: the retention form is chosen in Python and its loops run over traced shapes
class Retention(nn.Module):
    """Multi-head retention token mixer: qkv projection, retention, per-head norm, output projection.

    The retention configuration (mode, direction, chunk size, kernel, decay) is validated here, once;
    the per-head log decay is kept in float32 (float64 for float64 inputs) per device, never in the
    model's reduced precision, so ``model.to(torch.bfloat16)`` cannot round gamma to 1.0.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = True,
            mode: RetentionMode = 'auto',
            direction: Direction = 'causal',
            chunk_size: int = 64,
            decay: DecaySchedule = 'vir',
            head_norm: bool = True,
            proj_drop: float = 0.,
            kernel: Kernel = 'auto',
            geometry: Geometry = '1d',
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        check_retention(mode, direction, chunk_size, kernel)
        check_geometry(geometry, mode, kernel)
        self.geometry = geometry
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.direction = direction
        self.decay = decay
        self.log_decay = tuple(decay_schedule(decay, num_heads))
        self._decay_cache: Dict[Tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self.mode, self.chunk_size, self.kernel = mode, chunk_size, kernel

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.head_norm = head_norm
        self.norm_weight = nn.Parameter(torch.ones(dim)) if head_norm else None
        self.norm_bias = nn.Parameter(torch.zeros(dim)) if head_norm else None
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def set_mode(self, mode: RetentionMode, chunk_size: Optional[int] = None, kernel: Optional[Kernel] = None) -> None:
        """Switch to another retention form (or chunk size, or chunkwise kernel); weights are untouched."""
        chunk_size = self.chunk_size if chunk_size is None else chunk_size
        kernel = self.kernel if kernel is None else kernel
        check_retention(mode, self.direction, chunk_size, kernel)
        check_geometry(self.geometry, mode, kernel)
        self.mode, self.chunk_size, self.kernel = mode, chunk_size, kernel

    def _log_decay(self, like: torch.Tensor) -> torch.Tensor:
        """Per-head log decay in ``decay_dtype(like)`` on like's device, built once per device and dtype."""
        key = (like.device, decay_dtype(like))
        if key not in self._decay_cache:
            self._decay_cache[key] = torch.tensor(self.log_decay, dtype=key[1], device=key[0])
        return self._decay_cache[key]

    def forward(self, x: torch.Tensor, grid: Optional[Grid] = None) -> torch.Tensor:
        """x [B, N, C]; ``grid`` (rows, cols) of the patches, the first rows * cols tokens (needed by 2D)."""
        B, N, C = x.shape
        mode = resolve_mode(self.mode, N)
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.geometry == '2d':
            out = self._retention_2d(qkv, mode, grid)
        elif mode == 'parallel':  # q, k and v read in place; q's scale rides on the (cached) decay matrix
            q, k, v = qkv.unbind(0)
            decay = cached_parallel_decay(self.log_decay, N, self.direction, q, self.scale)
            out = retention_parallel(q, k, v, self._log_decay(q), self.direction, decay=decay, scale=self.scale)
        else:
            # head-major q, k and v in one copy (padded with zero tokens at the end, which change no real token's
            # output in either direction): every matmul after reads them in place, where strided views cost a copy
            pad = chunk_padding(mode, self.kernel, x, N, self.chunk_size)
            qkv = F.pad(qkv, (0, 0, 0, pad)) if pad else qkv.contiguous()
            qkv[0].mul_(self.scale)  # q scaled in place: a copy, not the projection's output that autograd may keep
            q, k, v = qkv.unbind(0)
            del qkv
            out = retention(q, k, v, self._log_decay(q), mode=mode, direction=self.direction,
                            chunk_size=self.chunk_size, kernel=self.kernel)
        return self.proj_drop(self.proj(self.normalize_heads(out[:, :, :N])))

    def _retention_2d(self, qkv: torch.Tensor, mode: str, grid: Optional[Grid]) -> torch.Tensor:
        """Patches by 2D retention; tokens past them (the class token) read every token, undecayed: they have no
        grid position, and a summary of the image should not favour a corner. No patch reads them."""
        if grid is None:
            raise ValueError("geometry '2d' needs the patch grid: call Retention(x, grid=(rows, cols))")
        patches = grid[0] * grid[1]
        q, k, v = qkv.unbind(0)
        out = retention_2d(q[:, :, :patches], k[:, :, :patches], v[:, :, :patches], self._log_decay(q), grid,
                           mode, self.direction, tile_side(self.chunk_size), self.scale)
        if q.shape[2] == patches:
            return out
        return torch.cat([out, read_all(q[:, :, patches:], k, v, self.scale)], dim=2)

    def step(self, x: torch.Tensor, state: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Causal 1D retention of x [B, n, C], the next tokens of a sequence whose earlier ones ``state`` sums (None
        at its start): their outputs, exactly those of the whole sequence, and the state after them (streaming)."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out, state = causal_retention_step(q * self.scale, k, v, self._log_decay(q), state, self.mode,
                                           self.chunk_size, self.kernel)
        return self.proj_drop(self.proj(self.normalize_heads(out))), state

    def normalize_heads(self, out: torch.Tensor, heads: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Retention output [B, h, N, d] of all heads (or of the ``heads`` kept) -> [B, N, h * d], each head of
        each token normalised (LayerNorm over d, on the token-major copy the projection needs anyway) and
        shifted and scaled in one ``addcmul``."""
        B, h, N, d = out.shape
        out = out.transpose(1, 2)
        if not self.head_norm:
            return out.reshape(B, N, h * d)
        weight, bias = self.norm_weight, self.norm_bias
        if heads is not None:
            weight, bias = (p.view(-1, d).index_select(0, heads).flatten() for p in (weight, bias))
        return torch.addcmul(bias, F.layer_norm(out, (d,)).view(B, N, h * d), weight)

    def extra_repr(self) -> str:
        return f'heads={self.num_heads}, mode={self.mode}, chunk_size={self.chunk_size}, ' \
               f'direction={self.direction}, geometry={self.geometry}, decay={self.decay}, kernel={self.kernel}'


class RetentionBlock(nn.Module):
    """Pre-LN transformer block with retention in place of attention."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            init_values: Optional[float] = 1e-5,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            norm_layer=nn.LayerNorm,
            act_layer=nn.GELU,
            **retention_kwargs,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.retention = Retention(dim, num_heads, qkv_bias=qkv_bias, proj_drop=proj_drop, **retention_kwargs)
        self.ls1 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, grid: Optional[Grid] = None) -> torch.Tensor:
        x = add_residual(x, self.retention(self.norm1(x), grid), self.ls1, self.drop_path1)
        return add_residual(x, self._mlp(x), self.ls2, self.drop_path2)

    def step(self, x: torch.Tensor, state: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The block on the next tokens of a causal 1D sequence (see ``Retention.step``): (x, retention state)."""
        mixed, state = self.retention.step(self.norm1(x), state)
        x = add_residual(x, mixed, self.ls1, self.drop_path1)
        return add_residual(x, self._mlp(x), self.ls2, self.drop_path2), state

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        """mlp(norm2(x)); without autograd, on long sequences, ``MLP_TOKENS_AT_ONCE`` tokens at a time (exact: it
        acts per token), so its 4x-wide hidden layer is never held for all of them: at high resolution that
        layer, not retention, is a block's memory peak."""
        if torch.is_grad_enabled() or x.shape[1] <= MLP_TOKENS_AT_ONCE:
            return self.mlp(self.norm2(x))
        out = torch.empty_like(x)
        for start in range(0, x.shape[1], MLP_TOKENS_AT_ONCE):
            part = slice(start, start + MLP_TOKENS_AT_ONCE)
            out[:, part] = self.mlp(self.norm2(x[:, part]))
        return out


def add_residual(x: torch.Tensor, y: torch.Tensor, layer_scale: nn.Module, drop_path: nn.Module) -> torch.Tensor:
    """x + drop_path(layer_scale(y)); where both are plain scalings (no drop path this step) one ``addcmul``
    instead of a multiply and an add: 2 of a block's ~25 small ops at 224 px."""
    if isinstance(layer_scale, LayerScale) and (isinstance(drop_path, nn.Identity) or not drop_path.training):
        return torch.addcmul(x, y, layer_scale.gamma)
    return x + drop_path(layer_scale(y))


@register_notrace_function  # FX: runs on the real input, so the message names its real size
def check_image_input(x: torch.Tensor, in_chans: int, patch_size: Tuple[int, int], padded: bool) -> torch.Tensor:
    """``x`` itself if it is a batch of images the model can take, else a ValueError saying what to change."""
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f"ViR expects images shaped [batch, {in_chans}, height, width], got {list(x.shape)}")
    h, w = x.shape[-2:]
    ph, pw = patch_size
    if not padded and (h % ph or w % pw):
        raise ValueError(
            f"input size {h}x{w} is not a multiple of the patch size {ph}x{pw}: resize or pad the image to "
            f"e.g. {math.ceil(h / ph) * ph}x{math.ceil(w / pw) * pw}, or create the model with "
            f"dynamic_img_pad=True to pad automatically")
    return x


class VisionRetentionNetwork(nn.Module):
    """ViR backbone and classifier with the timm model API.

    Any input whose sides are multiples of the patch size works: position embeddings are resampled
    to the token grid (and cached per grid size outside training). ``dynamic_img_pad=True`` pads
    other sizes up to the next multiple instead of raising.

    ``pos_embed='none'`` (as in timm's ViT) drops the learned absolute position embedding, leaving
    position to the retention decay: for dense models trained on crops and run on whole, much larger
    images, where a resampled embedding would be stretched over a grid many times its training size.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: GlobalPool = 'token',
            embed_dim: int = 768,
            depth: int = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            init_values: Optional[float] = 1e-5,
            class_token: bool = True,
            pos_embed: PosEmbed = 'learn',
            retention_mode: RetentionMode = 'auto',
            chunk_size: int = 64,
            retention_kernel: Kernel = 'auto',
            direction: Direction = 'causal',
            geometry: Geometry = '1d',
            decay_schedule: DecaySchedule = 'vir',
            head_norm: bool = True,
            dynamic_img_pad: bool = False,
            drop_rate: float = 0.,
            pos_drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer=None,
            act_layer=None,
    ):
        super().__init__()
        self._check_pool(global_pool, class_token)
        check_choice('pos_embed', pos_embed, POS_EMBEDS)
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        act_layer = act_layer or nn.GELU
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.in_chans = in_chans
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
            strict_img_size=False, dynamic_img_pad=dynamic_img_pad, output_fmt='NHWC',
        )
        self.patch_size = self.patch_embed.patch_size
        self.dynamic_img_pad = dynamic_img_pad
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim)) \
            if pos_embed == 'learn' else None
        self._pos_embed_cache: Dict[tuple, torch.Tensor] = {}
        self.pos_drop = nn.Dropout(pos_drop_rate)

        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            RetentionBlock(
                dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                init_values=init_values, proj_drop=proj_drop_rate, drop_path=dpr[i],
                norm_layer=norm_layer, act_layer=act_layer, mode=retention_mode, direction=direction,
                chunk_size=chunk_size, decay=decay_schedule, head_norm=head_norm, kernel=retention_kernel,
                geometry=geometry,
            )
            for i in range(depth)])
        self.feature_info = [
            dict(module=f'blocks.{i}', num_chs=embed_dim, reduction=self.patch_size[0]) for i in range(depth)]
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @staticmethod
    def _check_pool(global_pool: str, class_token: bool) -> None:
        check_choice('global_pool', global_pool, GLOBAL_POOLS)
        if global_pool == 'token' and not class_token:
            raise ValueError("global_pool='token' needs class_token=True; use global_pool='avg' without one")

    def init_weights(self) -> None:
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        named_apply(init_weights_vit_timm, self)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        return {'pos_embed', 'cls_token'}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^cls_token|pos_embed|patch_embed',
            blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self._check_pool(global_pool, self.cls_token is not None)
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def set_retention_mode(self, mode: RetentionMode, chunk_size: Optional[int] = None,
                           kernel: Optional[Kernel] = None) -> None:
        """Switch every block to another retention form (or chunkwise kernel); weights are untouched."""
        for block in self.blocks:
            block.retention.set_mode(mode, chunk_size, kernel)

    @property
    def retention_mode(self) -> str:
        return self.blocks[0].retention.mode

    def train(self, mode: bool = True):
        self._pos_embed_cache.clear()  # also the way to drop it after writes through `.data`
        return super().train(mode)

    def _resampled_pos_embed(self, grid: Tuple[int, int]) -> torch.Tensor:
        """Position embeddings for a token grid; resampled ones are cached while no gradient is needed.

        The cache key includes the parameter's version counter, so optimizer steps, load_state_dict
        and other in-place updates invalidate it; writes through ``.data`` do not count (call
        ``model.eval()`` again after them).
        """
        uncached = isinstance(grid[0], torch.fx.Proxy) or torch.compiler.is_compiling() or \
            (torch.is_grad_enabled() and self.pos_embed.requires_grad)  # tracers and autograd see the computation
        if uncached:
            return resample_abs_pos_embed(self.pos_embed, list(grid), self.patch_embed.grid_size, num_prefix_tokens=0)
        if tuple(grid) == tuple(self.patch_embed.grid_size):
            return self.pos_embed
        key = (tuple(grid), self.pos_embed.device, self.pos_embed.dtype, self.pos_embed._version)
        if key not in self._pos_embed_cache:
            self._pos_embed_cache.clear()  # weights changed or moved: older entries are stale
            self._pos_embed_cache[key] = resample_abs_pos_embed(
                self.pos_embed.detach(), list(grid), self.patch_embed.grid_size, num_prefix_tokens=0)
        return self._pos_embed_cache[key]

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.patch_embed(check_image_input(x, self.in_chans, self.patch_size, self.dynamic_img_pad))  # NHWC
        grid = (x.shape[1], x.shape[2])
        x = x.flatten(1, 2)
        if self.pos_embed is not None:
            x = x + self._resampled_pos_embed(grid)
        if self.cls_token is not None:
            x = torch.cat([x, self.cls_token.expand(x.shape[0], -1, -1)], dim=1)
        return self.pos_drop(x), grid

    def _run_block(self, block: nn.Module, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint(block, x, grid)
        return block(x, grid)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, grid = self._embed(x)
        for block in self.blocks:
            x = self._run_block(block, x, grid)
        return self.norm(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == 'token':
            return x[:, -1]  # the class token is last
        if self.global_pool == 'avg':
            return x[:, :x.shape[1] - self.num_prefix_tokens].mean(dim=1)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ):
        """Features of chosen blocks, as in timm's ViT.

        indices: last n blocks if int, all if None, else the listed block indices.
        Returns the list of intermediates if ``intermediates_only``, else (final features, intermediates).
        Spatial features are [B, C, H/p, W/p] ('NCHW') or [B, H/p * W/p, C] ('NLC'); with
        ``return_prefix_tokens`` each is paired with its class token.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x, (gh, gw) = self._embed(x)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, block in enumerate(blocks):
            x = self._run_block(block, x, (gh, gw))
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)

        num_patches = gh * gw
        prefix_tokens = [y[:, num_patches:] for y in intermediates]
        intermediates = [y[:, :num_patches] for y in intermediates]
        if output_fmt == 'NCHW':
            intermediates = [y.reshape(y.shape[0], gh, gw, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if return_prefix_tokens and self.num_prefix_tokens:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last wanted intermediate (and optionally norm and head)."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices


def _infer_prefix_tokens(num_tokens: int) -> int:
    for prefix in range(0, 9):
        side = math.isqrt(num_tokens - prefix)
        if side * side == num_tokens - prefix:
            return prefix
    raise ValueError(f"cannot infer the square position-embedding grid of a checkpoint with {num_tokens} positions")


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: VisionRetentionNetwork) -> Dict[str, torch.Tensor]:
    """Adapt a timm ViT (or ViR) checkpoint to ``model``.

    ViT attention weights become retention weights (same qkv/proj shapes); the ViT class-token
    position is dropped (ViR puts none on its class token); position embeddings and patch
    embeddings are resampled to the model's grid and patch size; a ViT without LayerScale maps
    to LayerScale 1.0 (the same function); the retention head norms, which ViT lacks, keep their
    identity initialisation.
    """
    state_dict = state_dict.get('model', state_dict)
    state_dict = state_dict.get('state_dict', state_dict)
    target = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        key = key.replace('.attn.', '.retention.')
        if key == 'pos_embed' and key in target and value.shape[1] != target[key].shape[1]:
            prefix = _infer_prefix_tokens(value.shape[1])  # ViT class/register token positions
            side = math.isqrt(value.shape[1] - prefix)
            value = resample_abs_pos_embed(
                value[:, prefix:], list(model.patch_embed.grid_size), [side, side], num_prefix_tokens=0)
        elif key == 'patch_embed.proj.weight' and value.shape[-2:] != target[key].shape[-2:]:
            value = resample_patch_embed(value, list(target[key].shape[-2:]))
        if key not in target:
            _logger.info(f'checkpoint entry {key} has no counterpart in ViR and is skipped')
            continue
        if key.startswith('head.') and value.shape != target[key].shape:
            _logger.warning(f'checkpoint {key} has shape {tuple(value.shape)}, the model {tuple(target[key].shape)}: '
                            f'the classifier is left freshly initialised')
            continue
        out[key] = value
    for key, value in target.items():
        if key in out:
            continue
        if key.endswith(('ls1.gamma', 'ls2.gamma')):
            out[key] = torch.ones_like(value)  # ViT without LayerScale == LayerScale of ones
        elif '.retention.norm_' in key or key.startswith('head.'):
            out[key] = value  # no usable counterpart: keep the model's own initialisation
    return out


def _cfg(**kwargs):
    return {
        'url': '',
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': None,
        'crop_pct': 0.9,
        'interpolation': 'bicubic',
        'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj',
        'classifier': 'head',
        'license': 'apache-2.0',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'vir_tiny_patch16_224': _cfg(),
    'vir_small_patch16_224': _cfg(),
    'vir_base_patch16_224': _cfg(),
    'vir_large_patch16_224': _cfg(),
})


def _create_vir(variant: str, pretrained: bool = False, **kwargs) -> VisionRetentionNetwork:
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(
        VisionRetentionNetwork,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


@register_model
def vir_tiny_patch16_224(pretrained: bool = False, **kwargs) -> VisionRetentionNetwork:
    """ViR-Tiny (192 wide, 12 deep, 3 heads): the test size."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create_vir('vir_tiny_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vir_small_patch16_224(pretrained: bool = False, **kwargs) -> VisionRetentionNetwork:
    """ViR-S (384 wide, 12 deep, 6 heads, about 22M parameters)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create_vir('vir_small_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vir_base_patch16_224(pretrained: bool = False, **kwargs) -> VisionRetentionNetwork:
    """ViR-B (768 wide, 12 deep, 12 heads, about 87M parameters)."""
    model_args = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create_vir('vir_base_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vir_large_patch16_224(pretrained: bool = False, **kwargs) -> VisionRetentionNetwork:
    """ViR-L (1024 wide, 24 deep, 16 heads, about 304M parameters)."""
    model_args = dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16)
    return _create_vir('vir_large_patch16_224', pretrained=pretrained, **dict(model_args, **kwargs))
