"""AdaViT ("Adaptive Vision Transformers for Efficient Image Recognition", Meng et al., CVPR 2022,
arXiv 2111.15668) for timm's ViT and for ViR.

Before every block but the first, a light decision network reads the block's input and chooses, per
image, which patches the block processes (a linear map per token), which heads it computes (one logit
per head, from the class token) and whether its token mixer and its MLP run (two logits, from the
class token). The class token is always kept.

* Training masks (``execution='mask'``): hard decisions from a Gumbel-sigmoid with a straight-through
  gradient; a dropped patch is no key of anyone's token mixing and its block outputs are zeroed, a
  dropped head's output is zeroed, a switched-off sub-block is the identity.
* Inference skips (``execution='skip'``, the default outside training): sub-blocks off for every image
  of the batch are not run, heads off for every image are not computed, and each image's dropped
  patches are gathered out of the token mixer and the MLP (results scattered back). It computes what
  the masked forward computes on the same decisions (tested).
* For ViR the kept tokens keep their original positions (``retention(..., positions=)``), so the decay
  between two kept tokens counts their distance in the image, in every retention form; in training a
  dropped token's key is zeroed, which is the same thing.

Choices beyond the official code (MengLcool/AdaViT; DeiT and T2T, classification only):
* the decision outside training is sigmoid(logit / tau) > threshold, the training decision without
  noise (the official code drops tau there, which moves the patch threshold 0.6 from logit 2.0 to 0.4);
* decisions start as "keep" (bias: P(keep) = 0.95 in training), so fine-tuning starts from the
  backbone's accuracy;
* head and sub-block decisions read the block's normalised class token (the official code's
  ``norm_policy`` option), so that one linear map per block makes every decision (fewer small
  products: at batch 1 their overhead is what limits the real speed-up);
* a dropped patch's MLP output is zeroed too, as inference that removes the patch must compute.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Literal, Optional, Sequence, Tuple, Union, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models._features import feature_take_indices

from ..errors import check_choice
from .retention import AUTO_PARALLEL_MAX_TOKENS, cached_parallel_decay, resolve_mode, retention
from .vir import RetentionBlock, VisionRetentionNetwork

__all__ = ['AdaptiveVisionTransformer', 'Decisions', 'gumbel_sigmoid', 'usage_loss', 'ADAPTABLE']

Adaptable = Literal['patches', 'heads', 'blocks']
Execution = Literal['auto', 'mask', 'skip']
ADAPTABLE = get_args(Adaptable)
EXECUTIONS = get_args(Execution)
KEEP_MARGIN = math.log(19)  # initial decision logit past the threshold: P(keep) = 0.95 under the Gumbel noise
SUPPORTED = "ViR (vir_lightning's VisionRetentionNetwork) and timm's VisionTransformer (vit_*, deit_*)"


def gumbel_sigmoid(logits: torch.Tensor, tau: float, cut, noise: bool) -> torch.Tensor:
    """Hard {0, 1} decisions sigmoid((logits + L) / tau) > threshold, written as logits + L > ``cut`` with
    cut = tau * logit(threshold); L is logistic noise (the difference of two Gumbels) if ``noise``. The
    gradient is the soft sigmoid's (straight-through)."""
    if noise:
        u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
        logits = logits + torch.log(u) - torch.log1p(-u)
    hard = (logits > cut).to(logits.dtype)
    if not torch.is_grad_enabled():  # inference: the comparison is all
        return hard
    soft = torch.sigmoid(logits / tau)
    return hard + (soft - soft.detach())  # exactly the hard value forward, the soft gradient backward


@dataclass
class Decisions:
    """Keep decisions of the adaptive blocks (every block but the first), 1.0 = kept, straight-through
    in training. ``patches`` [B, L, N] (prefix tokens included, always 1), ``heads`` [B, L, H],
    ``blocks`` [B, L, 2] (token mixer, MLP); None where that kind is not adapted. ``prefix`` marks the
    class (and other prefix) token columns of ``patches``."""
    patches: Optional[torch.Tensor]
    heads: Optional[torch.Tensor]
    blocks: Optional[torch.Tensor]
    prefix: torch.Tensor

    def kinds(self) -> Dict[str, torch.Tensor]:
        """The decisions of each adapted kind, by name."""
        return {kind: getattr(self, kind) for kind in ADAPTABLE if getattr(self, kind) is not None}

    def usage(self) -> Dict[str, torch.Tensor]:
        """Mean kept fraction per kind (patches counted without the prefix tokens)."""
        return {kind: (value[..., ~self.prefix] if kind == 'patches' else value).mean()
                for kind, value in self.kinds().items()}


def usage_loss(decisions: Decisions, targets: Dict[str, float], weights: Dict[str, float]) -> torch.Tensor:
    """The paper's usage losses: w |head usage - t| + w |block usage - t| + w (patch usage - t)^2."""
    loss = decisions.prefix.new_zeros((), dtype=torch.float32)
    for kind, used in decisions.usage().items():
        gap = used.float() - targets[kind]
        loss = loss + weights[kind] * (gap.square() if kind == 'patches' else gap.abs())
    return loss


class DecisionNetwork(nn.Module):
    """The decisions for one block from its normalised input [B, N, C] (the block's own norm1 output):
    one linear map gives every token its patch logit and the class token its head and sub-block logits."""

    def __init__(self, dim: int, num_heads: int, adapt: Sequence[str], tau: float, threshold: float,
                 patch_threshold: float):
        super().__init__()
        self.tau = tau
        self.sizes = {kind: size for kind, size in zip(ADAPTABLE, (1, num_heads, 2)) if kind in adapt}
        starts = [sum(list(self.sizes.values())[:i]) for i in range(len(self.sizes))]
        self.slots = {kind: slice(start, start + size) for (kind, size), start in zip(self.sizes.items(), starts)}
        self.per_token = 'patches' in self.sizes
        thresholds = torch.cat([torch.full((size,), patch_threshold if kind == 'patches' else threshold)
                                for kind, size in self.sizes.items()]).double()
        self.register_buffer('cut', (tau * torch.logit(thresholds)).float(), persistent=False)
        self.logits = nn.Linear(dim, len(thresholds))
        nn.init.trunc_normal_(self.logits.weight, std=1e-3)
        with torch.no_grad():
            self.logits.bias.copy_(self.cut + KEEP_MARGIN)

    def forward(self, normed: torch.Tensor, cls_index: int, hard: bool) -> torch.Tensor:
        """Every decision of the block, [B, N, K] (one row per token) when patches are adapted, else [B, K]:
        bools if ``hard`` (what skipped execution reads), else straight-through {0, 1} floats."""
        logits = self.logits(normed if self.per_token else normed[:, cls_index])
        if hard:
            return logits > self.cut
        return gumbel_sigmoid(logits, self.tau, self.cut, noise=self.training)

    def split(self, keep: torch.Tensor, cls_index: int, prefix: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        """(patches [..., N], heads [..., H], blocks [..., 2]) of ``forward``'s decisions (of one block, or stacked
        over blocks), None where not adapted; prefix tokens are always kept."""
        found = dict.fromkeys(ADAPTABLE)
        for kind, slot in self.slots.items():
            if kind == 'patches':
                found[kind] = keep[..., 0].masked_fill(prefix, 1)
            else:
                found[kind] = keep[..., cls_index, slot] if self.per_token else keep[..., slot]
        return found['patches'], found['heads'], found['blocks']


class TokenMixer:
    """The token mixer of a ViR block (retention) or a timm ViT block (attention), run on a subset of
    heads and of tokens: what both masked and skipped execution need. Holds no parameters of its own."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.is_retention = not hasattr(module, 'q_norm')
        self.num_heads, self.head_dim = module.num_heads, module.head_dim

    def __call__(self, x: torch.Tensor, heads: Optional[torch.Tensor], head_gate: Optional[torch.Tensor],
                 key_mask: Optional[torch.Tensor], positions: Optional[torch.Tensor], length: int) -> torch.Tensor:
        """x [B, N, C]; ``heads``: the indices of the heads to compute (None: all); ``head_gate`` [B, h]
        multiplies each computed head's output; ``key_mask`` [B, N] bool: tokens others may read (None:
        all); ``positions`` [B or 1, N] int64: the tokens' places among the ``length`` tokens of the image
        (ViR; None: 0..N-1)."""
        m = self.module
        B, N, _ = x.shape
        h, d = (self.num_heads if heads is None else len(heads)), self.head_dim
        if h == 0:  # no head computed: the output projection of zeros
            out = x.new_zeros(B, N, m.proj.out_features)
            return out if m.proj.bias is None else out + m.proj.bias.to(x.dtype)
        weight, bias = m.qkv.weight, m.qkv.bias
        if heads is not None:  # the kept heads' rows of W_qkv ([3, H, d] of them); index_select: 3x faster than []
            weight = weight.view(3, self.num_heads, d, -1).index_select(1, heads).reshape(3 * h * d, -1)
            bias = None if bias is None else bias.view(3, self.num_heads, d).index_select(1, heads).reshape(-1)
        q, k, v = F.linear(x, weight, bias).reshape(B, N, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        if self.is_retention:
            if key_mask is not None:
                k = k * key_mask[:, None, :, None].to(k.dtype)
            log_decay = m._log_decay(q) if heads is None else m._log_decay(q).index_select(0, heads)
            mode = resolve_mode(m.mode, N)
            decay = self._parallel_decay(q, heads, positions, length) if mode == 'parallel' else None
            out = retention(q * m.scale, k, v, log_decay, mode=mode, direction=m.direction, chunk_size=m.chunk_size,
                            kernel=m.kernel, positions=positions, decay=decay)
            out = m.normalize_heads(out, heads).view(B, N, h, d)
        else:
            q, k = m.q_norm(q), m.k_norm(k)
            scores = (q * m.scale) @ k.transpose(-1, -2)  # timm's unfused attention: flop_counter counts it on CPU
            if key_mask is not None:  # a token that others may not read still reads itself (no empty rows)
                readable = key_mask[:, None, None, :] | torch.eye(N, dtype=torch.bool, device=x.device)
                scores = scores.masked_fill(~readable, float('-inf'))
            out = (m.attn_drop(scores.softmax(dim=-1)) @ v).transpose(1, 2)
        if head_gate is not None:
            out = out * head_gate[:, None, :, None].to(out.dtype)
        weight = m.proj.weight
        if heads is not None:
            weight = weight.view(-1, self.num_heads, d).index_select(1, heads).flatten(1)
        return m.proj_drop(F.linear(out.reshape(B, N, h * d), weight, m.proj.bias))

    def _parallel_decay(self, q: torch.Tensor, heads: Optional[torch.Tensor], positions: Optional[torch.Tensor],
                        length: int) -> Optional[torch.Tensor]:
        """The parallel form's decay for these heads and tokens, cut out of the whole image's cached one (the same
        numbers, without building it); None for long sequences."""
        m = self.module
        whole = cached_parallel_decay(m.log_decay, length, m.direction, q)
        if whole is None:
            return None
        decay = whole[0] if heads is None else whole[0].index_select(0, heads)  # [h, length, length]
        if positions is None:
            return decay[None]
        if len(positions) == 1:
            return decay.index_select(1, positions[0]).index_select(2, positions[0])[None]
        return decay[:, positions[:, :, None], positions[:, None, :]].transpose(0, 1)  # [B', h, N, N]


def _masked_block(block: nn.Module, mixer: TokenMixer, x: torch.Tensor, normed: torch.Tensor,
                  patches: Optional[torch.Tensor], heads: Optional[torch.Tensor],
                  blocks: Optional[torch.Tensor]) -> torch.Tensor:
    """One block with its decisions as masks (every image and token computed): the training form."""
    keep = None if patches is None else patches[..., None]
    key_mask = None if patches is None else patches.detach() > 0.5  # the gradient flows through the outputs
    gates = []
    for sub in (0, 1):
        gate = keep
        if blocks is not None:
            gate = blocks[:, sub, None, None] if gate is None else gate * blocks[:, sub, None, None]
        gates.append(gate)
    y = block.drop_path1(block.ls1(mixer(normed, None, heads, key_mask, None, x.shape[1])))
    x = x + (y if gates[0] is None else gates[0] * y)
    y = block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x + (y if gates[1] is None else gates[1] * y)


def _kept_tokens(patches: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Per image, the indices of its kept tokens (``patches`` [B, N] bool) in order, padded to the batch's largest
    count by repeating the last one [B, n], and which slots are real [B, n] (None: all); (None, None) when every
    token is kept."""
    if patches is None or bool(patches.all()):
        return None, None
    counts = patches.sum(1)
    order = torch.sort((~patches).to(torch.uint8), dim=1, stable=True).indices[:, :int(counts.max())]
    valid = torch.arange(order.shape[1], device=order.device) < counts[:, None]
    last = order.gather(1, (counts - 1).clamp(min=0)[:, None])
    return torch.where(valid, order, last), valid


def _add_to_tokens(x: torch.Tensor, source: torch.Tensor, rows: Optional[torch.Tensor], index: Optional[torch.Tensor],
                   valid: Optional[torch.Tensor], update) -> torch.Tensor:
    """x plus ``update`` of ``source``'s tokens (x itself, or a per-token function of it) on the chosen images
    (``rows``; None: all) and tokens (``index`` [B, n] with its ``valid`` slots; None: all), x itself elsewhere.
    The chosen tokens are read and written back by one index_select and one index_add over the flattened batch."""
    if rows is None and index is None:
        return x + update(source, None, None)
    B, N, C = x.shape
    if rows is not None:
        index = torch.arange(N, device=x.device).expand(len(rows), N) if index is None else index[rows]
        valid = None if valid is None else valid[rows]
    flat = index if rows is None and B == 1 else \
        index + N * (torch.arange(B, device=x.device) if rows is None else rows)[:, None]
    chosen = source.reshape(B * N, C).index_select(0, flat.flatten()).view(*flat.shape, C)
    change = update(chosen, index, valid)
    if valid is not None:  # padding slots add nothing
        change = change * valid[..., None].to(change.dtype)
    # index_add along dim 1 of [1, B N, C]: on CPU 2.5x faster than along dim 0 of [B N, C]
    return x.reshape(1, B * N, C).index_add(1, flat.flatten(), change.reshape(1, -1, C).to(x.dtype)).view(B, N, C)


def _images_running(blocks: Optional[torch.Tensor], sub: int) -> Tuple[bool, Optional[torch.Tensor]]:
    """Whether any image runs sub-block ``sub`` (0: token mixer, 1: MLP) of ``blocks`` [B, 2] bool, and which
    (None: all)."""
    if blocks is None:
        return True, None
    on = blocks[:, sub]
    if not bool(on.any()):
        return False, None
    return True, None if bool(on.all()) else on.nonzero()[:, 0]


def _heads_running(heads: Optional[torch.Tensor], rows: Optional[torch.Tensor], num_heads: int):
    """The heads that some running image keeps (``heads`` [B, H] bool; None: all), and each image's gate over them
    (None: all kept)."""
    if heads is None:
        return None, None
    chosen = heads if rows is None else heads[rows]
    if bool(chosen.all()):
        return None, None
    kept = chosen.any(0).nonzero()[:, 0]
    gate = chosen[:, kept]
    return (None if len(kept) == num_heads else kept), (None if bool(gate.all()) else gate)


Plan = Tuple  # (index, valid, (mixer runs, rows), (MLP runs, rows), heads, head gate): what a skipped block computes


def _plan_images(decide: DecisionNetwork, keep: torch.Tensor, cls_index: int, prefix: torch.Tensor,
                 num_heads: int) -> Plan:
    """The plan of a batch of images: tokens padded per image, sub-blocks run on the images that keep them."""
    patches, heads, blocks = decide.split(keep, cls_index, prefix)
    index, valid = _kept_tokens(patches)
    mixer, mlp = _images_running(blocks, 0), _images_running(blocks, 1)
    kept_heads, gate = _heads_running(heads, mixer[1], num_heads) if mixer[0] else (None, None)
    return index, valid, mixer, mlp, kept_heads, gate


def _plan_image(decide: DecisionNetwork, keep: torch.Tensor, cls_index: int, prefix: torch.Tensor) -> Plan:
    """The plan of a single image, its head and sub-block decisions read at once as Python values (at batch 1 each
    small tensor operation costs about as much as the arithmetic it would save)."""
    row = (keep[0, cls_index] if decide.per_token else keep[0]).tolist()
    mixer_on, mlp_on = row[decide.slots['blocks']] if 'blocks' in decide.slots else (True, True)
    kept_heads = index = None
    if mixer_on and 'heads' in decide.slots:
        chosen = row[decide.slots['heads']]
        if not all(chosen):
            kept_heads = torch.tensor([h for h, on in enumerate(chosen) if on], device=keep.device)
    if decide.per_token and (mixer_on or mlp_on):
        kept = (keep[0, :, 0] | prefix).nonzero()[:, 0]
        index = None if len(kept) == len(prefix) else kept[None]
    return index, None, (mixer_on, None), (mlp_on, None), kept_heads, None


def _skipped_block(block: nn.Module, mixer: TokenMixer, x: torch.Tensor, normed: torch.Tensor, plan: Plan):
    """One block computing only what its plan keeps: the inference form (same outputs as the masked one on the
    same decisions). ``normed`` is block.norm1(x), already computed for the decisions."""
    index, valid, (mixer_on, mixer_rows), (mlp_on, mlp_rows), kept_heads, gate = plan
    length = x.shape[1]
    if mixer_on:
        def mix(tokens, idx, ok):
            positions = idx if mixer.is_retention else None  # ViR: kept tokens keep their distances
            return block.ls1(mixer(tokens, kept_heads, gate, ok, positions, length))
        x = _add_to_tokens(x, normed, mixer_rows, index, valid, mix)
    if mlp_on:
        def mlp(tokens, idx, ok):
            return block.ls2(block.mlp(block.norm2(tokens)))
        x = _add_to_tokens(x, x, mlp_rows, index, valid, mlp)
    return x


def _check_adaptable(backbone: nn.Module) -> None:
    """A ValueError naming the supported families when AdaViT cannot adapt ``backbone``."""
    from timm.models.vision_transformer import Attention, Block, VisionTransformer
    name = type(backbone).__name__
    if isinstance(backbone, VisionRetentionNetwork):
        if backbone.cls_token is None:
            raise ValueError("AdaViT decides from the class token: build the ViR with class_token=True")
        if not all(type(b) is RetentionBlock for b in backbone.blocks):
            raise ValueError("AdaViT adapts ViR built of RetentionBlocks only")
        if any(b.retention.geometry != '1d' for b in backbone.blocks):
            raise ValueError("AdaViT adapts ViR of geometry '1d' (its kept tokens keep their raster positions): "
                             "build the ViR with geometry='1d'")
        return
    if isinstance(backbone, VisionTransformer):
        if backbone.cls_token is None:
            raise ValueError("AdaViT decides from the class token: use a ViT with class_token=True")
        for block in backbone.blocks:
            if type(block) is not Block or type(block.attn) is not Attention or \
                    getattr(block.attn, 'gate', None) is not None or not isinstance(block.attn.norm, nn.Identity):
                raise ValueError(f"AdaViT adapts timm ViTs of plain pre-norm blocks (timm's Block and Attention, no "
                                 f"scale_norm or gating); this one has {type(block).__name__} / "
                                 f"{type(getattr(block, 'attn', None)).__name__}")
        return
    raise ValueError(f"AdaViT adapts {SUPPORTED}; got {name}. Pick one of those backbones "
                     f"(e.g. vir_tiny_patch16_224, vit_tiny_patch16_224, deit_small_patch16_224)")


class AdaptiveVisionTransformer(nn.Module):
    """A ViR or timm ViT classifier whose blocks run only what each image needs (AdaViT).

    Args:
        backbone: the model to adapt, with its class token and head; its weights are used as they are.
        adapt: which decisions to learn: 'patches', 'heads', 'blocks' (token mixer and MLP separately).
        tau: Gumbel-sigmoid temperature (the paper's 5).
        threshold: keep when sigmoid(logit / tau) > threshold, for heads and blocks (0.5).
        patch_threshold: the same for patches (0.6).
        execution: 'mask' computes everything and masks (training), 'skip' computes only what is kept,
            'auto' masks in training and skips outside it.
    """

    def __init__(self, backbone: nn.Module, adapt: Sequence[Adaptable] = ADAPTABLE, tau: float = 5.0,
                 threshold: float = 0.5, patch_threshold: float = 0.6, execution: Execution = 'auto'):
        super().__init__()
        _check_adaptable(backbone)
        for kind in adapt:
            check_choice('AdaViT decision', kind, ADAPTABLE)
        check_choice('AdaViT execution', execution, EXECUTIONS)
        if not tau > 0:
            raise ValueError(f"the decision temperature tau must be > 0, got {tau}")
        for option, value in (('threshold', threshold), ('patch_threshold', patch_threshold)):
            if not 0 < value < 1:
                raise ValueError(f"AdaViT {option} must be in (0, 1), got {value}")
        self.backbone = backbone
        self.adapt = tuple(dict.fromkeys(adapt))
        self.execution = execution
        self.is_retention = isinstance(backbone, VisionRetentionNetwork)
        dim = backbone.embed_dim
        num_heads = backbone.blocks[0].retention.num_heads if self.is_retention else backbone.blocks[0].attn.num_heads
        self.num_heads = num_heads
        self.decisions = nn.ModuleList(
            DecisionNetwork(dim, num_heads, self.adapt, tau, threshold, patch_threshold)
            for _ in range(len(backbone.blocks) - 1))
        self._mixers = [TokenMixer(block.retention if self.is_retention else block.attn)
                        for block in backbone.blocks[1:]]
        self.num_classes = backbone.num_classes
        self.num_features = backbone.num_features

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, int, Tuple[int, int]]:
        """Tokens [B, N, C], which are prefix tokens [N] bool, the class token's index and the patch grid."""
        backbone = self.backbone
        if self.is_retention:
            x, grid = backbone._embed(x)
            prefix = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
            prefix[-1] = True  # ViR's class token is last
            return x, prefix, x.shape[1] - 1, grid
        grid = tuple(backbone.patch_embed.dynamic_feat_size(x.shape[-2:]))
        x = backbone.norm_pre(backbone.patch_drop(backbone._pos_embed(backbone.patch_embed(x))))
        prefix = torch.arange(x.shape[1], device=x.device) < backbone.num_prefix_tokens
        return x, prefix, 0, grid

    def skips(self) -> bool:
        """Whether this forward computes only what is kept (else it masks)."""
        return self.execution == 'skip' or (self.execution == 'auto' and not self.training)

    def _forward_blocks(self, x: torch.Tensor, take: Sequence[int] = ()):
        """Final tokens, the outputs of blocks ``take``, the decisions, prefix mask and patch grid."""
        x, prefix, cls_index, grid = self._embed(x)
        skip = self.skips()
        blocks = self.backbone.blocks
        x = blocks[0](x)
        taken, outputs = [], [x] if 0 in take else []
        for i, (block, mixer, decide) in enumerate(zip(blocks[1:], self._mixers, self.decisions), start=1):
            normed = block.norm1(x)
            keep = decide(normed, cls_index, hard=skip)
            taken.append(keep)
            if not skip:
                x = _masked_block(block, mixer, x, normed, *decide.split(keep, cls_index, prefix))
            else:
                plan = _plan_image(decide, keep, cls_index, prefix) if len(x) == 1 else \
                    _plan_images(decide, keep, cls_index, prefix, self.num_heads)
                x = _skipped_block(block, mixer, x, normed, plan)
            if i in take:
                outputs.append(x)
        taken = torch.stack(taken, dim=1)  # [B, L, (N,) K]
        decisions = Decisions(*self.decisions[0].split(taken.float() if skip else taken, cls_index, prefix), prefix)
        return x, outputs, decisions, grid

    def forward_adaptive(self, x: torch.Tensor) -> Tuple[torch.Tensor, Decisions]:
        """Normalised final tokens and the decisions that produced them."""
        x, _, decisions, _ = self._forward_blocks(x)
        return self.backbone.norm(x), decisions

    def forward_intermediates_adaptive(self, x: torch.Tensor, indices: Union[int, Sequence[int]]
                                       ) -> Tuple[List[torch.Tensor], Decisions]:
        """The patch maps [B, C, h, w] after blocks ``indices`` (timm's convention: an int n takes the last n),
        un-normalised as timm's forward_intermediates gives them to dense heads, and the decisions."""
        take, _ = feature_take_indices(len(self.backbone.blocks), indices)
        _, outputs, decisions, (h, w) = self._forward_blocks(x, take)
        patches = ~decisions.prefix
        maps = [y[:, patches].reshape(len(y), h, w, -1).permute(0, 3, 1, 2).contiguous() for y in outputs]
        return maps, decisions

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_adaptive(x)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.backbone.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.backbone.reset_classifier(num_classes, global_pool)
        self.num_classes = num_classes

    @torch.jit.ignore
    def no_weight_decay(self):
        return {f'backbone.{name}' for name in self.backbone.no_weight_decay()}

    def macs(self, decisions: Decisions) -> torch.Tensor:
        """Multiply-adds per image [B] that skipped execution spends on these decisions, counted from the kept
        numbers as torch.utils.flop_counter counts them (matrix products and convolutions; FLOPs = 2 x MACs)."""
        backbone, prefix = self.backbone, decisions.prefix
        tokens, heads, dim = prefix.numel(), self.num_heads, backbone.embed_dim
        kinds = {kind: value.detach().double() for kind, value in decisions.kinds().items()}
        images = next(iter(kinds.values())).shape[0]
        stem = backbone.patch_embed.proj
        classifier = backbone.get_classifier()
        fixed = (tokens - int(prefix.sum())) * stem.weight[0].numel() * stem.out_channels \
            + (classifier.weight.numel() if isinstance(classifier, nn.Linear) else 0) \
            + sum(self._block_macs(backbone.blocks[0], float(tokens), float(heads)))
        total = torch.full((images,), float(fixed), dtype=torch.float64)
        outputs = self.decisions[0].logits.out_features  # one linear map per block: all tokens, or the class token
        total += (tokens if 'patches' in kinds else 1) * dim * outputs * (len(backbone.blocks) - 1)
        for i, block in enumerate(backbone.blocks[1:]):
            n = kinds['patches'][:, i].sum(-1) if 'patches' in kinds else torch.full_like(total, tokens)
            h = kinds['heads'][:, i].sum(-1) if 'heads' in kinds else torch.full_like(total, heads)
            on = kinds['blocks'][:, i] if 'blocks' in kinds else total.new_ones(images, 2)
            mixer, mlp = self._block_macs(block, n, h)
            total += on[:, 0] * mixer + on[:, 1] * mlp
        return total

    def _block_macs(self, block: nn.Module, n, h) -> Tuple:
        """(token mixer, MLP) multiply-adds of one block on n tokens with h heads (numbers or tensors)."""
        module = block.retention if self.is_retention else block.attn
        mixer = n * self.backbone.embed_dim * 4 * h * module.head_dim  # qkv and output projections
        mlp = n * (block.mlp.fc1.weight.numel() + block.mlp.fc2.weight.numel())
        if not self.is_retention:
            return mixer + 2 * h * n * n * module.head_dim, mlp
        if module.mode != 'auto':
            return mixer + self._retention_macs(module, module.mode, n, h), mlp
        n = torch.as_tensor(n, dtype=torch.float64)  # each image's token count picks its form, as resolve_mode does
        auto = torch.where(n <= AUTO_PARALLEL_MAX_TOKENS, self._retention_macs(module, 'parallel', n, h),
                           self._retention_macs(module, 'chunkwise', n, h))
        return mixer + auto, mlp

    @staticmethod
    def _retention_macs(module: nn.Module, mode: str, n, h):
        """Multiply-adds of retention itself (no projections) in ``mode`` on n tokens with h heads."""
        d = module.head_dim
        if mode == 'parallel':
            return 2 * h * n * n * d
        if mode == 'recurrent':  # a query-state product per token, per direction
            return h * n * d * d * (1 if module.direction == 'causal' else 2)
        # chunkwise: scores and values inside chunks, state updates and reads across them
        c = torch.clamp(torch.as_tensor(n), max=module.chunk_size)
        states = 2 if module.direction == 'causal' else 4
        return h * torch.ceil(n / c) * (2 * c * c * d + states * c * d * d)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        """The backbone's layer groups (for layer-wise lr decay); the decision networks learn at the head's rate."""
        inner = self.backbone.group_matcher(coarse)
        def nest(pattern):
            return r'^backbone\.(?:' + pattern.lstrip('^') + ')'
        blocks = [(nest(pattern), order) for pattern, order in inner['blocks']] + [(r'^decisions\.', (99999,))]
        return dict(stem=nest(inner['stem']), blocks=blocks)
