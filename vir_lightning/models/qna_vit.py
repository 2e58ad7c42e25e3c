"""QnA-ViT (Arar et al., "Learned Queries for Efficient Local Attention", CVPR 2022) as timm models.

A 4x4 patch stem and four stages of pre-LN blocks on NHWC maps at strides 4, 8, 16, 32: QnA blocks
(``qna.py``) in the early stages, windowed self-attention blocks in the late ones, and a stride-2
QnA block (its skip a strided 1x1 projection) that halves the map and doubles the width between
stages. Final LayerNorm, global average pool, linear classifier. Tiny/Small/Base follow the
official configurations (moabarar/qna models/qna_vit.py: widths 64 (96 for Base) doubling per
stage, QnA head width 8, window 7/7/14/7, drop path 0.05/0.2/0.5, the strided blocks counted in
the drop-path schedule).

The stem is a 4x4 convolution with bias followed by LayerNorm (timm's Swin patch embedding), where
the official's has neither: with the official stem, zero-padded image regions (crops padded to
size, sliding windows, detector batches) become exactly-zero tokens, every later LayerNorm sees
zero variance and multiplies its gradient by 1/sqrt(eps) = 1000, and a 512-pixel segmentation
step on padded crops overflowed the gradient norm at step 0.

Layout beside the official code: the stride-2 block that ENDS stage i there STARTS stage i + 1
here (timm's Swin layout), so that stage i's output is the stride-2^(i+2) map that dense heads
read; the computation is the same. The window blocks hold timm's Swin ``WindowAttention`` (no
shift; the official no-bias qkv).

Input sizes: any multiple of the stem's 4 pixels (``dynamic_img_pad=True`` pads others). The
stride-2 blocks give ceil(H / 2), so only multiples of 32 give maps of exactly H/8, H/16, H/32.
A map smaller than its stage's window is attended whole; one the window does not divide is
zero-padded up to a multiple, the padded tokens masked out of the keys (``WindowAttentionBlock``).
"""
from functools import partial
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    ClassifierHead, DropPath, Mlp, calculate_drop_path_rates, register_notrace_function, register_notrace_module,
    to_2tuple, trunc_normal_,
)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint, named_apply
from timm.models.swin_transformer import WindowAttention, window_partition, window_reverse

from ..errors import check_choice
from .qna import QnA, QnAMode, check_window

__all__ = ['QnAViT', 'QnABlock', 'WindowAttentionBlock']

GLOBAL_POOLS = ('avg', 'max', 'avgmax', '')
STRIDE_STEM = 4


@register_notrace_function  # FX: runs on the real input, so the message names its real size
def stem_input(x: torch.Tensor, in_chans: int, pad: bool) -> torch.Tensor:
    """``x``, padded up to the stem's multiple if ``pad``, or a ValueError saying what to change."""
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f"QnA-ViT expects images shaped [batch, {in_chans}, height, width], got {list(x.shape)}")
    h, w = x.shape[-2:]
    if not h % STRIDE_STEM and not w % STRIDE_STEM:
        return x
    if not pad:
        raise ValueError(
            f"input size {h}x{w} is not a multiple of the {STRIDE_STEM}-pixel stem: resize or pad the image to "
            f"e.g. {-(-h // STRIDE_STEM) * STRIDE_STEM}x{-(-w // STRIDE_STEM) * STRIDE_STEM}, or create the model "
            f"with dynamic_img_pad=True to pad automatically")
    return F.pad(x, (0, -w % STRIDE_STEM, 0, -h % STRIDE_STEM))


class QnABlock(nn.Module):
    """Pre-LN block: QnA token mixer and MLP. With stride 2 it halves the map and changes the width;
    its skip is then a strided 1x1 projection and its mixing branch has no drop path (as the official)."""

    def __init__(self, dim: int, out_dim: int, num_heads: int, kernel_size: int = 3, stride: int = 1,
                 n_queries: int = 2, mode: QnAMode = 'conv', mlp_ratio: float = 4., drop_path: float = 0.,
                 norm_layer=nn.LayerNorm, act_layer=nn.GELU):
        super().__init__()
        self.stride = stride
        self.norm1 = norm_layer(dim)
        self.attn = QnA(dim, out_dim, num_heads, kernel_size, stride, n_queries, mode)
        self.skip = nn.Linear(dim, out_dim, bias=False) if stride != 1 or out_dim != dim else None
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. and self.skip is None else nn.Identity()
        self.norm2 = norm_layer(out_dim)
        self.mlp = Mlp(out_dim, int(out_dim * mlp_ratio), act_layer=act_layer)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.skip is None else self.skip(x[:, ::self.stride, ::self.stride])  # 1x1 conv, stride s
        x = skip + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


@register_notrace_module  # FX: the window and padding are decided from the map's size
class WindowAttentionBlock(nn.Module):
    """Pre-LN block: self-attention inside non-overlapping windows, MLP.

    The attention's parameters are timm's Swin ``WindowAttention`` (qkv, relative position bias
    table, output projection; state-dict names and init as timm's). A map smaller than the window
    is attended as one window of the map's size (as timm's Swin); a map larger than the window but
    not a multiple of it is zero-padded up to one, the padded tokens masked out of the keys. Both
    give exactly the attention of the real tokens over the real tokens with their offsets' biases.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, mlp_ratio: float = 4.,
                 drop_path: float = 0., norm_layer=nn.LayerNorm, act_layer=nn.GELU):
        super().__init__()
        if window_size < 1:
            raise ValueError(f"window_size must be positive, got {window_size}")
        self.window_size = to_2tuple(window_size)
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, num_heads, window_size=window_size, qkv_bias=False)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def _relative_bias(self, window: Tuple[int, int]) -> torch.Tensor:
        """[heads, N, N] biases of a window of size ``window`` (at most the full one) from the full table."""
        table = self.attn.relative_position_bias_table
        full_h, full_w = self.window_size
        ys, xs = torch.meshgrid(torch.arange(window[0], device=table.device),
                                torch.arange(window[1], device=table.device), indexing='ij')
        ys, xs = ys.flatten(), xs.flatten()
        index = (ys[:, None] - ys[None] + full_h - 1) * (2 * full_w - 1) + (xs[:, None] - xs[None] + full_w - 1)
        return table[index].permute(2, 0, 1)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        window = (min(self.window_size[0], H), min(self.window_size[1], W))
        (wh, ww), pad_h, pad_w = window, -H % window[0], -W % window[1]
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        windows = window_partition(x, window).reshape(-1, wh * ww, C)
        bias = self._relative_bias(window).to(x.dtype).unsqueeze(0)  # [1, heads, N, N]
        if pad_h or pad_w:
            real = x.new_zeros(1, H + pad_h, W + pad_w, 1, dtype=torch.bool)
            real[:, :H, :W] = True
            keys = window_partition(real, window).reshape(-1, 1, 1, wh * ww)  # [windows, 1, 1, N]
            bias = (bias + x.new_zeros(keys.shape).masked_fill(~keys, float('-inf'))).repeat(B, 1, 1, 1)
        attn = self.attn
        q, k, v = attn.qkv(windows).reshape(len(windows), wh * ww, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                             dropout_p=attn.attn_drop.p if self.training else 0.)
        out = attn.proj_drop(attn.proj(out.transpose(1, 2).reshape(len(windows), wh * ww, -1)))
        return window_reverse(out.view(-1, wh, ww, C), window, H + pad_h, W + pad_w)[:, :H, :W]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self._attend(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class QnAStage(nn.Module):
    """Optional stride-2 QnA block (from the previous stage's width), window blocks, then QnA blocks."""

    def __init__(self, in_dim: int, dim: int, downsample: Optional[Tuple[int, int]], window_depth: int,
                 window_heads: int, window_size: int, qna_depth: int, qna_heads: int, kernel_size: int,
                 drop_path: Sequence[float], block_kwargs: Dict):
        super().__init__()
        drop_path = list(drop_path)
        self.downsample = nn.Identity() if downsample is None else QnABlock(
            in_dim, dim, num_heads=downsample[0], kernel_size=downsample[1], stride=2,
            drop_path=drop_path.pop(0), **block_kwargs)
        mlp_kwargs = {k: block_kwargs[k] for k in ('mlp_ratio', 'norm_layer', 'act_layer')}
        self.blocks = nn.Sequential(
            *[WindowAttentionBlock(dim, window_heads, window_size, drop_path=drop_path.pop(0), **mlp_kwargs)
              for _ in range(window_depth)],
            *[QnABlock(dim, dim, qna_heads, kernel_size, drop_path=drop_path.pop(0), **block_kwargs)
              for _ in range(qna_depth)])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            x = checkpoint(block, x) if self.grad_checkpointing and not torch.jit.is_scripting() else block(x)
        return x


def _per_stage(name: str, value: Union[int, Sequence[int]], stages: int) -> List[int]:
    values = [value] * stages if isinstance(value, int) else list(value)
    if len(values) != stages:
        raise ValueError(f"{name} needs one value per stage ({stages}), got {value!r}")
    return values


class QnAViT(nn.Module):
    """QnA-ViT backbone and classifier with the timm model API (see the module docstring).

    Args:
        dims: width per stage (the official configs double it per stage).
        qna_depths / window_depths: QnA and window-attention blocks per stage (the stride-2 blocks
            between stages come on top).
        qna_heads / window_heads: heads per stage; the stride-2 block into stage i has twice stage
            i-1's QnA heads, and its kernel size.
        window_sizes: window side per stage; kernel_size: QnA window side (odd), one or per stage.
        n_queries: learned queries per QnA head; qna_mode: 'conv' (efficient) or 'naive' (reference).
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            dims: Sequence[int] = (64, 128, 256, 512),
            qna_depths: Sequence[int] = (2, 3, 2, 0),
            qna_heads: Sequence[int] = (8, 16, 32, 64),
            window_depths: Sequence[int] = (0, 0, 4, 2),
            window_heads: Sequence[int] = (2, 4, 8, 16),
            window_sizes: Sequence[int] = (7, 7, 14, 7),
            kernel_size: Union[int, Sequence[int]] = 3,
            n_queries: int = 2,
            qna_mode: QnAMode = 'conv',
            mlp_ratio: float = 4.,
            dynamic_img_pad: bool = False,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            norm_layer=None,
            act_layer=None,
    ):
        super().__init__()
        check_choice('global_pool', global_pool, GLOBAL_POOLS)
        dims = list(dims)
        stages = len(dims)
        qna_depths, qna_heads, window_depths, window_heads, window_sizes, kernel_sizes = (
            _per_stage(name, value, stages) for name, value in (
                ('qna_depths', qna_depths), ('qna_heads', qna_heads), ('window_depths', window_depths),
                ('window_heads', window_heads), ('window_sizes', window_sizes), ('kernel_size', kernel_size)))
        for k in kernel_sizes:
            check_window(k, 1)
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        act_layer = act_layer or nn.GELU
        self.num_classes, self.in_chans, self.dynamic_img_pad = num_classes, in_chans, dynamic_img_pad
        self.img_size, self.patch_size = to_2tuple(img_size), to_2tuple(STRIDE_STEM)
        self.num_features = self.head_hidden_size = dims[-1]

        self.stem = nn.Conv2d(in_chans, dims[0], STRIDE_STEM, stride=STRIDE_STEM)
        self.stem_norm = norm_layer(dims[0])
        depths = [q + w + (i > 0) for i, (q, w) in enumerate(zip(qna_depths, window_depths))]
        dpr = calculate_drop_path_rates(drop_path_rate, sum(depths))
        block_kwargs = dict(n_queries=n_queries, mode=qna_mode, mlp_ratio=mlp_ratio, norm_layer=norm_layer,
                            act_layer=act_layer)
        self.stages = nn.Sequential(*[
            QnAStage(
                dims[max(i - 1, 0)], dims[i], None if i == 0 else (2 * qna_heads[i - 1], kernel_sizes[i - 1]),
                window_depths[i], window_heads[i], window_sizes[i], qna_depths[i], qna_heads[i], kernel_sizes[i],
                dpr[sum(depths[:i]):sum(depths[:i + 1])], block_kwargs)
            for i in range(stages)])
        self.feature_info = [dict(num_chs=dims[i], reduction=STRIDE_STEM * 2 ** i, module=f'stages.{i}')
                             for i in range(stages)]
        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                   input_fmt='NHWC')
        named_apply(_init_weights, self)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Queries, position biases and offset weights (as timm's Swin exempts its bias tables)."""
        exempt = ('.query', '.rel_pos_bias', '.attn_scale', '.relative_position_bias_table')
        return {name for name, _ in self.named_parameters() if name.endswith(exempt)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^stem',  # stem and stem_norm
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            check_choice('global_pool', global_pool, GLOBAL_POOLS)
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def set_qna_mode(self, mode: QnAMode) -> None:
        """Switch every QnA layer to the 'conv' or 'naive' form; weights are untouched."""
        for module in self.modules():
            if isinstance(module, QnA):
                module.set_mode(mode)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        x = stem_input(x, self.in_chans, self.dynamic_img_pad)
        return self.stem_norm(self.stem(x).permute(0, 2, 3, 1))  # NHWC from here on

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final NHWC map [B, H/32, W/32, C], normalised."""
        return self.norm(self.stages(self._stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ):
        """Stage outputs, as timm's Swin: indices are stages (last n if int, all if None).

        Maps are [B, C, H/s, W/s] ('NCHW') or [B, H/s, W/s, C] ('NHWC'); ``norm`` applies the final
        norm to the last stage's. Returns the list if ``intermediates_only``, else (final features, list).
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x = self._stem(x)
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        last = len(self.stages) - 1
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                y = self.norm(x) if norm and i == last else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == 'NCHW' else y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last wanted one (and optionally norm and head)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices


def _init_weights(module: nn.Module, name: str = '') -> None:
    """timm's Swin init: truncated-normal linears, zero biases (QnA's own parameters: its reset_parameters)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _cfg(**kwargs):
    return {
        'url': '',
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': 0.875,
        'interpolation': 'bicubic',
        'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem',
        'classifier': 'head.fc',
        'license': 'apache-2.0',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'qna_vit_tiny': _cfg(),
    'qna_vit_small': _cfg(),
    'qna_vit_base': _cfg(),
})


def _create_qna_vit(variant: str, pretrained: bool = False, **kwargs) -> QnAViT:
    out_indices = kwargs.pop('out_indices', (0, 1, 2, 3))
    return build_model_with_cfg(
        QnAViT, variant, pretrained, feature_cfg=dict(out_indices=out_indices, feature_cls='getter'), **kwargs)


@register_model
def qna_vit_tiny(pretrained: bool = False, **kwargs) -> QnAViT:
    """QnA-ViT-T (widths 64-512; paper: 16M parameters, 2.5 GFLOPs, 81.7% ImageNet top-1)."""
    model_args = dict(dims=(64, 128, 256, 512), qna_depths=(2, 3, 2, 0), qna_heads=(8, 16, 32, 64),
                      window_depths=(0, 0, 4, 2), window_heads=(2, 4, 8, 16), drop_path_rate=0.05)
    return _create_qna_vit('qna_vit_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def qna_vit_small(pretrained: bool = False, **kwargs) -> QnAViT:
    """QnA-ViT-S (widths 64-512, 12 window blocks in stage 3; paper: 25M, 4.4 GFLOPs, 83.2%)."""
    model_args = dict(dims=(64, 128, 256, 512), qna_depths=(2, 3, 6, 0), qna_heads=(8, 16, 32, 64),
                      window_depths=(0, 0, 12, 2), window_heads=(2, 4, 8, 16), drop_path_rate=0.2)
    return _create_qna_vit('qna_vit_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def qna_vit_base(pretrained: bool = False, **kwargs) -> QnAViT:
    """QnA-ViT-B (widths 96-768; paper: 56M, 9.7 GFLOPs, 83.9%)."""
    model_args = dict(dims=(96, 192, 384, 768), qna_depths=(2, 3, 6, 0), qna_heads=(6, 12, 24, 48),
                      window_depths=(0, 0, 12, 2), window_heads=(3, 6, 12, 24), drop_path_rate=0.5)
    return _create_qna_vit('qna_vit_base', pretrained=pretrained, **dict(model_args, **kwargs))
