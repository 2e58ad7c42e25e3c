"""Query-and-Attend (QnA), arXiv 2112.11435: learned-query local attention, computed as grouped convolutions.

Every output pixel o attends over the k x k window W(o) around it (stride 1, or 2 to halve the map;
zero padding (k-1)/2, so the softmax runs over the window's pixels inside the map) with queries that
are learned parameters shared by all windows (``n_queries`` per head, unit-normalised, scaled by
d^-1/2)::

    out(o) = proj( concat_heads sum_queries  sum_a w(a) exp(s(a) + b(a)) v(a) / sum_a exp(s(a) + b(a)) )

with s(a) = q . W_k x(a) the score of window pixel a, v = W_v x, b a learned bias per (offset, query,
head) and w a learned weight per (offset, query, head) in the numerator only (the official layer's
``attn_scale='normal'``). Keys are never materialised: the queries are folded into W_k, so the
scores are one 1x1 projection of x (as the official JAX layer, moabarar/qna layers/qna.py).

Two forms compute the same numbers (``mode``):

* ``'naive'``, the reference: unfold every window, softmax over it, weighted sum of unfolded values;
  memory grows with k^2.
* ``'conv'``, the efficient one: exp(s + b) = exp(s) exp(b), so numerator and denominator are
  depthwise convolutions of per-pixel exp-scores (times values) with exp(b) (times w) kernels; no
  window is ever unfolded.

Numerics, beyond the official layer (which takes exp of the raw scores in the compute dtype, so a
score above 88 overflows float32, above 11 float16): the attention runs in float32 (float64 for
float64 inputs) with autocast off, and the conv form shifts the scores by their maximum over the
image per (query, head) and the biases by theirs, constants shared by every window that the softmax
ratio cancels exactly. No exponent then exceeds 0, so nothing overflows. When an image's scores span
more than float32's exponent range can hold for every window (``SAFE_SPAN``, far beyond anything a
trained layer on normalised inputs produces), the layer computes that call with the naive form,
whose per-window softmax is exact at any range; under tracing (FX, torch.export, torch.compile),
where that check cannot branch, windows that far below the image's best score come out as 0.
"""
import math
from typing import Literal, Optional, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, trunc_normal_

from ..errors import check_choice

__all__ = ['QnA', 'QnAMode', 'QNA_MODES', 'check_window']

QnAMode = Literal['conv', 'naive']
QNA_MODES = get_args(QnAMode)


def check_window(kernel_size: int, stride: int) -> None:
    """ValueError unless the window is odd (centred: padding (k-1)/2) and the stride 1 or 2."""
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        even = isinstance(kernel_size, int) and kernel_size > 1
        hint = f": use {kernel_size - 1} or {kernel_size + 1}" if even else ''
        raise ValueError(f"QnA kernel_size must be an odd positive integer (a centred window, padding (k-1)/2), "
                         f"got {kernel_size!r}{hint}")
    if stride not in (1, 2):
        raise ValueError(f"QnA stride must be 1 or 2 (2 halves the map), got {stride!r}")


SAFE_SPAN = {torch.float32: 80., torch.float64: 700.}  # exp(-span) stays a normal number, with room for k^2 terms


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()


def _span(scores: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Largest range of score + bias exponents that one (image, query, head) hands the conv form."""
    score_span = (scores.amax(dim=(2, 3)) - scores.amin(dim=(2, 3))).amax()
    return score_span + (bias.amax(dim=(1, 2)) - bias.amin(dim=(1, 2))).amax()


@register_notrace_module  # FX: the map-size check and the form are chosen in Python
class QnA(nn.Module):
    """Learned-query local attention over NHWC maps: [B, H, W, dim] -> [B, H', W', out_dim].

    Args:
        dim: input channels; out_dim: output channels (default dim; the stride-2 blocks of QnA-ViT double it).
        num_heads: heads; out_dim must be divisible by it.
        kernel_size: odd window side k; stride: 1, or 2 for H' = ceil(H / 2).
        n_queries: learned queries per head (2 in the paper).
        mode: 'conv' (efficient) or 'naive' (the unfolded reference); same numbers, see the module docstring.
    """

    def __init__(
            self,
            dim: int,
            out_dim: Optional[int] = None,
            num_heads: int = 8,
            kernel_size: int = 3,
            stride: int = 1,
            n_queries: int = 2,
            mode: QnAMode = 'conv',
    ):
        super().__init__()
        out_dim = out_dim or dim
        if out_dim % num_heads:
            raise ValueError(f"QnA out_dim {out_dim} must be divisible by num_heads {num_heads}")
        if n_queries < 1:
            raise ValueError(f"QnA n_queries must be at least 1, got {n_queries}")
        check_window(kernel_size, stride)
        check_choice('QnA mode', mode, QNA_MODES)
        self.num_heads, self.head_dim, self.n_queries = num_heads, out_dim // num_heads, n_queries
        self.kernel_size, self.stride, self.padding = kernel_size, stride, (kernel_size - 1) // 2
        self.mode = mode
        windows = n_queries * num_heads  # one softmax per (query, head), channel index query * heads + head
        self.query = nn.Parameter(torch.empty(n_queries, out_dim))
        self.key = nn.Linear(dim, out_dim, bias=False)  # W_k: folded into the queries, never applied to x
        self.value = nn.Linear(dim, out_dim, bias=False)
        self.rel_pos_bias = nn.Parameter(torch.zeros(windows, kernel_size, kernel_size))
        self.attn_scale = nn.Parameter(torch.empty(windows, kernel_size, kernel_size))
        self.proj = nn.Linear(out_dim, out_dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation of the attention's own parameters (projections: the model's)."""
        std = self.head_dim ** -0.5
        trunc_normal_(self.query, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.rel_pos_bias)
        nn.init.normal_(self.attn_scale, std=0.02)

    def set_mode(self, mode: QnAMode) -> None:
        """Switch between the 'conv' and 'naive' forms; weights are untouched."""
        check_choice('QnA mode', mode, QNA_MODES)
        self.mode = mode

    def _check_map(self, height: int, width: int) -> None:
        need = (self.kernel_size + 1) // 2
        if height < need or width < need:
            raise ValueError(
                f"QnA window {self.kernel_size}x{self.kernel_size} needs a map of at least {need}x{need} (larger "
                f"windows only add offsets that always fall in the padding), got {height}x{width}: use a smaller "
                f"kernel_size or a larger input (each stride-2 stage halves the map)")

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """s = q . W_k x for every pixel, query and head: [B, n_queries * heads, H, W], without forming keys."""
        q = self.query.view(self.n_queries, self.num_heads, self.head_dim)
        q = q / (q.norm(dim=-1, keepdim=True) + 1e-6) * self.head_dim ** -0.5
        w_k = self.key.weight.view(self.num_heads, self.head_dim, -1)
        folded = torch.einsum('qhd,hdc->qhc', q, w_k).reshape(self.n_queries * self.num_heads, -1)
        return F.linear(x, folded).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        self._check_map(H, W)
        scores = self.scores(x)
        values = self.value(x).permute(0, 3, 1, 2)
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            scores, bias = scores.to(dtype), self.rel_pos_bias.to(dtype)
            conv = self.mode == 'conv' and (_tracing() or _span(scores.detach(), bias.detach()) <= SAFE_SPAN[dtype])
            attend = self._attend_conv if conv else self._attend_naive
            out = attend(scores, values.to(dtype), bias, self.attn_scale.to(dtype))
        return self.proj(out.permute(0, 2, 3, 1).to(values.dtype))

    def _out_size(self, size: int) -> int:
        return (size + 2 * self.padding - self.kernel_size) // self.stride + 1

    def _attend_conv(self, s: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        B, _, H, W = s.shape
        nq, h, d = self.n_queries, self.num_heads, self.head_dim
        conv = dict(stride=self.stride, padding=self.padding)
        exp_s = (s - s.detach().amax(dim=(2, 3), keepdim=True)).exp()  # per-(query, head) shift: cancels exactly
        exp_b = (bias - bias.detach().amax(dim=(1, 2), keepdim=True)).exp()
        weighted = (exp_s.view(B, nq, h, 1, H, W) * v.view(B, 1, h, d, H, W)).reshape(B, nq * h * d, H, W)
        numerator = F.conv2d(weighted, (exp_b * weight).repeat_interleave(d, dim=0).unsqueeze(1),
                             groups=nq * h * d, **conv)
        denominator = F.conv2d(exp_s, exp_b.unsqueeze(1), groups=nq * h, **conv)
        Ho, Wo = numerator.shape[-2:]
        denominator = denominator.clamp_min(torch.finfo(s.dtype).tiny).view(B, nq, h, 1, Ho, Wo)
        return (numerator.view(B, nq, h, d, Ho, Wo) / denominator).sum(dim=1).reshape(B, h * d, Ho, Wo)

    def _attend_naive(self, s: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        B, _, H, W = s.shape
        nq, h, d, k = self.n_queries, self.num_heads, self.head_dim, self.kernel_size
        unfold = dict(kernel_size=k, stride=self.stride, padding=self.padding)
        Ho, Wo = self._out_size(H), self._out_size(W)
        logits = F.unfold(s, **unfold).view(B, nq * h, k * k, Ho * Wo) + bias.view(1, nq * h, k * k, 1)
        inside = F.unfold(s.new_ones(1, 1, H, W), **unfold).view(1, 1, k * k, Ho * Wo) > 0
        attn = logits.masked_fill(~inside, -math.inf).softmax(dim=2) * weight.view(1, nq * h, k * k, 1)
        windows = F.unfold(v, **unfold).view(B, h, d, k * k, Ho * Wo)
        out = torch.einsum('bqhal,bhdal->bhdl', attn.view(B, nq, h, k * k, Ho * Wo), windows)
        return out.reshape(B, h * d, Ho, Wo)

    def extra_repr(self) -> str:
        return f'heads={self.num_heads}, queries={self.n_queries}, kernel_size={self.kernel_size}, ' \
               f'stride={self.stride}, mode={self.mode}'
