"""Retention, the token mixer of Vision Retention Networks (arXiv 2310.19731), in pure PyTorch.

Retention is softmax-free attention with a per-head exponential decay. With queries pre-scaled
by d^-1/2 and decay gamma_h, token n of head h reads

    causal:        o_n = sum_{m <= n} gamma^(n - m) (q_n . k_m) v_m
    bidirectional: o_n = sum_m        gamma^|n - m| (q_n . k_m) v_m

Three forms compute the same numbers:

* ``parallel``: materialises the N x N decayed score matrix; simplest, best for short sequences
  and for training at low resolution.
* ``recurrent``: one d x d state per head, S_n = gamma S_(n-1) + k_n^T v_n, o_n = q_n S_n;
  O(N) time and O(1) state, a Python loop over tokens (a reference, and for streaming).
* ``chunkwise``: parallel inside chunks of ``chunk_size`` tokens, recurrent across chunks;
  O(N C d) time, no N x N tensor. The form for high resolution.
* ``auto``: parallel up to ``AUTO_PARALLEL_MAX_TOKENS`` tokens, chunkwise above (as flash-linear-attention's
  layers pick a kernel by sequence length): the faster form at every size on CPU, measured on ViR-T.

Bidirectional retention is exact: chunkwise, in one pass (symmetric decay inside chunks, a forward
and a backward scan over chunk states); recurrent and on flash-linear-attention's kernels, as two
causal passes (forward, and backward on the flipped sequence) minus the diagonal term both count.

Decay powers are always formed in float32 (or float64 for float64 inputs) and only from
non-positive exponents, so they neither round to 1.0 under bf16 autocast nor overflow at long
sequence lengths.

The options are ``Literal`` types (the CLI lists and checks their values); ``check_retention``
validates a configuration once, when a module is built, so ``retention()`` itself only dispatches.
"""
import functools
import math
from typing import List, Literal, Optional, Tuple, get_args

import torch
import torch.nn.functional as F

from ..errors import check_choice
from .retention_fla import causal_retention_fla, fla_available

RetentionMode = Literal['parallel', 'recurrent', 'chunkwise', 'auto']
Direction = Literal['causal', 'bidirectional']
DecaySchedule = Literal['vir', 'retnet']
Kernel = Literal['auto', 'torch', 'fla']
RETENTION_MODES = get_args(RetentionMode)
DIRECTIONS = get_args(Direction)
DECAY_SCHEDULES = get_args(DecaySchedule)
KERNELS = get_args(Kernel)
CACHED_DECAY_ELEMENTS = 2 ** 20  # parallel-form decay matrices kept up to 4 MB in float32 (at most 8 of them)
# ViR-T, 2 CPU threads, bidirectional, chunk 64: chunkwise/parallel time 1.30 at 197 tokens, 1.06 at 401, 0.65 at 485
AUTO_PARALLEL_MAX_TOKENS = 448


def resolve_mode(mode: str, num_tokens: int) -> str:
    """The form ``mode`` runs on ``num_tokens`` tokens: ``auto`` made concrete, any other mode itself."""
    if mode != 'auto':
        return mode
    return 'parallel' if num_tokens <= AUTO_PARALLEL_MAX_TOKENS else 'chunkwise'


def check_retention(mode: str, direction: str, chunk_size: int, kernel: str) -> None:
    """Validate a retention configuration (once, when a module is built or switched)."""
    check_choice('retention mode', mode, RETENTION_MODES)
    check_choice('retention direction', direction, DIRECTIONS)
    check_choice('retention kernel', kernel, KERNELS)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    if kernel == 'fla' and not fla_available():
        raise ValueError(
            "retention kernel 'fla' needs flash-linear-attention (pip install '.[gpu]') and a CUDA device; "
            "use kernel 'auto' to fall back to the PyTorch form elsewhere")


def decay_schedule(name: str, num_heads: int) -> List[float]:
    """Per-head log decay, log(gamma_h), as Python floats computed in double precision.

    ``vir``: gamma_h = 1 - exp(linspace(log(1/32), log(1/512), H)), the ViR release, any head count.
    ``retnet``: gamma_h = 1 - 2^(-5 - h), the RetNet schedule used by the fla kernels.
    """
    check_choice('decay schedule', name, DECAY_SCHEDULES)
    if name == 'vir':
        if num_heads == 1:
            rates = [1 / 32]
        else:
            lo, hi = math.log(1 / 32), math.log(1 / 512)
            rates = [math.exp(lo + (hi - lo) * h / (num_heads - 1)) for h in range(num_heads)]
    else:
        rates = [2.0 ** (-5 - h) for h in range(num_heads)]
    return [math.log1p(-r) for r in rates]


def decay_dtype(x: torch.Tensor) -> torch.dtype:
    """The precision of decays and states for inputs like ``x``: float64 for float64, float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def token_positions(q: torch.Tensor, positions: Optional[torch.Tensor]) -> torch.Tensor:
    """Token positions [B', N] in ``decay_dtype(q)``: 0..N-1 (B' = 1) if ``positions`` is None."""
    if positions is None:
        return torch.arange(q.shape[-2], device=q.device, dtype=decay_dtype(q))[None]
    return positions.to(device=q.device, dtype=decay_dtype(q))


def _decay_pow(log_decay: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """gamma_h ** exponent for non-negative exponents [B', 1, *rest], shape [B', H, *rest]."""
    return torch.exp(log_decay.view((1, -1) + (1,) * (exponent.dim() - 2)) * exponent)


def _causal_decay(log_decay: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """gamma^dist where dist >= 0, else 0 (a token never reads a later one)."""
    return _decay_pow(log_decay, dist.clamp(min=0)) * (dist >= 0)


def parallel_decay(log_decay: torch.Tensor, positions: torch.Tensor, direction: str) -> torch.Tensor:
    """The parallel form's decay matrix [B', H, N, N]: D[n, m] = gamma^(p_n - p_m) (causal, 0 where p_m > p_n) or
    gamma^|p_n - p_m|, for token positions [B', N] in the decay's precision."""
    dist = (positions[:, :, None] - positions[:, None, :])[:, None]  # [B', 1, N, N]
    return _causal_decay(log_decay, dist) if direction == 'causal' else _decay_pow(log_decay, dist.abs())


@functools.lru_cache(maxsize=8)
def _decay_for_length(log_decay: Tuple[float, ...], n: int, direction: str, device: torch.device,
                      dtype: torch.dtype, scale: float) -> torch.Tensor:
    with torch.inference_mode(False):  # a normal tensor, which autograd may save even if inference mode built it
        decay = parallel_decay(torch.tensor(log_decay, dtype=dtype, device=device),
                               torch.arange(n, dtype=dtype, device=device)[None], direction)
        return decay if scale == 1 else decay.mul_(scale)


def cached_parallel_decay(log_decay: Tuple[float, ...], n: int, direction: str,
                          like: torch.Tensor, scale: float = 1.0) -> Optional[torch.Tensor]:
    """``parallel_decay`` [1, H, n, n] for positions 0..n-1 and the per-head ``log_decay`` floats, times ``scale``,
    from a small cache that every module with the same decays shares: on short sequences building the matrix costs
    more than using it (100 of the 137 us a 50-token, 4-head retention takes on CPU). None for long sequences (over
    ``CACHED_DECAY_ELEMENTS`` entries, where the products dominate) and under tracing or compilation."""
    if not isinstance(n, int) or torch.compiler.is_compiling() or len(log_decay) * n * n > CACHED_DECAY_ELEMENTS:
        return None
    return _decay_for_length(tuple(log_decay), n, direction, like.device, decay_dtype(like), float(scale))


def retention_parallel(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, direction: str = 'causal',
        positions: Optional[torch.Tensor] = None, decay: Optional[torch.Tensor] = None, scale: float = 1.0,
) -> torch.Tensor:
    """Parallel form: (Q K^T * D scale) V with D = ``parallel_decay`` of the positions (``decay``: D times ``scale``,
    if already built). ``scale`` is q's d^-1/2 for unscaled q, carried by the decay matrix so that q and k can
    be read in place, uncopied and unscaled (5% of a ViR-T pass at 224 px)."""
    if decay is None:
        decay = parallel_decay(log_decay, token_positions(q, positions), direction)
        decay = decay if scale == 1 else decay.mul_(scale)
    scores = (q @ k.transpose(-1, -2)).mul_(decay)  # in place: matmul's backward does not need its output
    return (scores.to(v.dtype) @ v).to(torch.promote_types(q.dtype, v.dtype))


def _full_precision(x: torch.Tensor):
    """Keep state arithmetic in float32 even inside a bf16/fp16 autocast region."""
    return torch.autocast(x.device.type, enabled=False)


def _recurrent_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
                      positions: Optional[torch.Tensor] = None) -> torch.Tensor:
    b, h, n, d = q.shape
    state_dtype = decay_dtype(q)
    out_dtype = torch.promote_types(q.dtype, v.dtype)
    with _full_precision(q):
        pos = token_positions(q, positions)
        steps = _decay_pow(log_decay, torch.diff(pos, prepend=pos[:, :1])[:, None])[..., None, None]  # [B', H, N, 1, 1]
        q, k, v = (t.to(state_dtype) for t in (q, k, v))
        state = q.new_zeros(b, h, d, v.shape[-1])
        outputs = []
        for i in range(n):
            state = steps[:, :, i] * state + k[:, :, i, :, None] * v[:, :, i, None, :]
            outputs.append((q[:, :, i, None, :] @ state).squeeze(-2))
        return torch.stack(outputs, dim=2).to(out_dtype)


def _split_chunks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_size: int,
                  positions: Optional[torch.Tensor]):
    """[B, H, N, d] -> [B, H, num_chunks, C, d], the last chunk zero-padded, and the chunks' geometry:

    * ``rel`` [B', 1, nc', C]: each token's position past its chunk's first token (nc' = 1 when the
      positions are 0..N-1: every chunk alike, so the in-chunk decays are built once);
    * ``span`` [B', 1, nc]: last minus first position of each chunk;
    * ``lead`` [B', 1, nc + 1]: first position of chunk i minus last of chunk i - 1 (0 at both ends).

    Zero keys and values after the last token contribute nothing to any real token, in either direction;
    they sit at the last token's position, so every decay exponent stays non-negative.
    """
    b, h, n, _ = q.shape
    c = min(chunk_size, n)
    num_chunks = -(-n // c)
    pad = num_chunks * c - n
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    chunks = tuple(t.reshape(b, h, num_chunks, c, t.shape[-1]) for t in (q, k, v))
    pos = token_positions(q, positions)  # q is padded: 0..nc*C-1 if positions is None
    if pad and positions is not None:
        pos = F.pad(pos[:, None], (0, pad), mode='replicate')[:, 0]
    pos = pos.view(pos.shape[0], num_chunks, c)
    rel = (pos[:, :1] if positions is None else pos - pos[..., :1])[:, None]
    first, last = pos[..., 0], pos[..., -1]
    lead = F.pad(first[:, 1:] - last[:, :-1], (1, 1))
    return chunks + (rel, (last - first)[:, None], lead[:, None])


def _merge_chunks(out: torch.Tensor, q: torch.Tensor, v: torch.Tensor, n: int) -> torch.Tensor:
    """[B, H, num_chunks, C, dv] -> [B, H, n, dv] in the inputs' promoted dtype, the padding dropped."""
    b, h, num_chunks, c, dv = out.shape
    return out.to(torch.promote_types(q.dtype, v.dtype)).reshape(b, h, num_chunks * c, dv)[:, :, :n]


def _scan_in_place(updates: torch.Tensor, decays: torch.Tensor, reverse: bool) -> torch.Tensor:
    """States entering each chunk: S_0 = 0, S_(i+1) = decays_i S_i + updates_i (chunks in reverse order if
    ``reverse``: S_(nc-1) = 0, S_(i-1) = decays_i S_i + updates_i), written in place into one buffer. Every chunk's
    operands are views made by one ``unbind`` each: indexing them chunk by chunk cost more than the scan's
    arithmetic (ViR-T, 2048 px: 6.8 -> 4.1 ms a block)."""
    num_chunks = updates.shape[2]
    states = torch.empty_like(updates)
    update, decay, state = updates.unbind(2), decays[..., None, None].unbind(2), states.unbind(2)
    state[-1 if reverse else 0].zero_()  # every other state is written below
    for i in range(num_chunks - 1, 0, -1) if reverse else range(num_chunks - 1):
        torch.addcmul(update[i], decay[i], state[i], out=state[i - 1 if reverse else i + 1])
    return states


class _ChunkStateScan(torch.autograd.Function):
    """``_scan_in_place`` with its gradient in closed form: the updates' gradient is the same scan run the other
    way over the states' gradient, and the decays' is <that, S_i>. Autograd through the loop made two graph
    nodes per chunk (ViR-T training step at 1024 px: 1,584 addcmul backwards, about 10% of the step) and kept
    every state twice (the list and its stack)."""

    @staticmethod
    def forward(ctx, updates: torch.Tensor, decays: torch.Tensor, reverse: bool) -> torch.Tensor:
        states = _scan_in_place(updates, decays, reverse)
        ctx.reverse = reverse
        ctx.save_for_backward(decays, states if decays.requires_grad else None)
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_states: torch.Tensor):
        decays, states = ctx.saved_tensors
        grad_updates = _scan_in_place(grad_states.contiguous(), decays, not ctx.reverse)
        grad_decays = None
        if ctx.needs_input_grad[1]:
            grad_decays = (grad_updates * states).sum((-2, -1)).sum_to_size(decays.shape)
        return grad_updates, grad_decays, None


def _scan(updates: torch.Tensor, decays: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """The states entering each chunk (see ``_scan_in_place``), differentiable. updates [B, H, nc, d, dv],
    decays [B', H, nc]; returns [B, H, nc, d, dv]."""
    return _ChunkStateScan.apply(updates, decays, reverse)


def _inner_chunks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inner_decay: torch.Tensor) -> torch.Tensor:
    """Every chunk's own part, (Q K^T * D) V, with the scores decayed in place (matmul's backward does not need
    its output, so autograd allows it)."""
    return (q @ k.transpose(-1, -2)).mul_(inner_decay).to(v.dtype) @ v


def _read_states(q: torch.Tensor, states: torch.Tensor, query_decay: torch.Tensor,
                 out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """What each chunk's queries read from the state entering it, gamma^offset (q S), added into ``out`` if given:
    the decay applied to the [C, dv] result, so no decayed copy of the queries is made."""
    read = q.to(states.dtype) @ states
    return read.mul_(query_decay) if out is None else out.addcmul_(read, query_decay)


def _chunkwise_causal(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, chunk_size: int,
        positions: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """All chunks' inner products in one batched matmul, then one short scan over chunk states."""
    n = q.shape[2]
    q, k, v, rel, span, lead = _split_chunks(q, k, v, chunk_size, positions)
    state_dtype = rel.dtype
    with _full_precision(q):
        # chunk i contributes sum_j gamma^(last_i - p_j) k_j^T v_j to the state carried out of it
        key_decay = _decay_pow(log_decay, span[..., None] - rel)[..., None]  # [B', H, nc', C, 1]
        states = _scan((k.to(state_dtype) * key_decay).transpose(-1, -2) @ v.to(state_dtype),
                       _decay_pow(log_decay, span + lead[..., :-1]))  # the state entering each chunk
        # token j is p_j - (last of the chunk before) past that state
        out = _read_states(q, states, _decay_pow(log_decay, rel + lead[..., :-1, None])[..., None])
        del states
    inner = _inner_chunks(q, k, v, _causal_decay(log_decay, rel[..., :, None] - rel[..., None, :]))
    return _merge_chunks(out.add_(inner), q, v, n)


def _chunkwise_bidirectional(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, chunk_size: int,
        positions: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Two-sided retention in one pass: symmetric decay gamma^|p_i - p_j| inside each chunk (one batched
    matmul for both directions, diagonal counted once), plus a forward scan over the states of the
    chunks before and a backward scan over those after. Half the inner work of two causal passes,
    and no flipped copies. Lean by construction: the two directions' states are made and read one after
    the other, and the chunks' scores only once they are gone (at 16,384 tokens, each is as large as
    the activations)."""
    n = q.shape[2]
    q, k, v, rel, span, lead = _split_chunks(q, k, v, chunk_size, positions)
    state_dtype = rel.dtype
    with _full_precision(q):
        k32, v32 = k.to(state_dtype), v.to(state_dtype)
        # the state before chunk i sits at the last token of chunk i - 1: what earlier chunks hand on, keys
        # decayed to their last token; token j is (its offset + lead) past it
        before = _scan((k32 * _decay_pow(log_decay, span[..., None] - rel)[..., None]).transpose(-1, -2) @ v32,
                       _decay_pow(log_decay, span + lead[..., :-1]))
        out = _read_states(q, before, _decay_pow(log_decay, rel + lead[..., :-1, None])[..., None])
        del before
        # the state after chunk i sits at the first token of chunk i + 1: keys decayed to their chunk's first
        # token; token j is (span - offset + next lead) before it
        after = _scan((k32 * _decay_pow(log_decay, rel)[..., None]).transpose(-1, -2) @ v32,
                      _decay_pow(log_decay, span + lead[..., 1:]), reverse=True)
        _read_states(q, after, _decay_pow(log_decay, span[..., None] - rel + lead[..., 1:, None])[..., None], out)
        del after
    inner = _inner_chunks(q, k, v, _decay_pow(log_decay, (rel[..., :, None] - rel[..., None, :]).abs()))
    return _merge_chunks(out.add_(inner), q, v, n)


def _bidirectional(causal_fn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
                   positions: Optional[torch.Tensor] = None):
    """Exact two-sided retention from a causal form: forward pass + flipped backward pass - the doubled diagonal
    (the flipped pass sees the positions mirrored, so its distances are the original ones)."""
    forward = causal_fn(q, k, v, log_decay, positions)
    mirrored = None if positions is None else -positions.flip(-1)
    backward = causal_fn(q.flip(-2), k.flip(-2), v.flip(-2), log_decay, mirrored).flip(-2)
    diagonal = (q * k).sum(-1, keepdim=True) * v
    return forward + backward - diagonal


def _use_fla(kernel: str, q: torch.Tensor) -> bool:
    if kernel == 'torch':
        return False
    if kernel == 'fla':
        if not q.is_cuda or q.dtype == torch.float64:
            raise RuntimeError("retention kernel 'fla' runs on CUDA tensors in float32, bfloat16 or float16 only; "
                               "use kernel 'auto' to fall back to the PyTorch form elsewhere")
        return True
    return q.is_cuda and q.dtype != torch.float64 and fla_available()


def chunk_padding(mode: str, kernel: str, x: torch.Tensor, num_tokens: int, chunk_size: int) -> int:
    """How many zero tokens to append to ``num_tokens`` (ViR: the patches and the class token) so that the PyTorch
    chunkwise form splits its inputs into chunks by views: ``Retention`` pads q, k and v together, in one copy,
    where the form would pad each (3 more copies of the activations, beside the originals)."""
    if resolve_mode(mode, num_tokens) != 'chunkwise' or _use_fla(kernel, x) or num_tokens <= chunk_size:
        return 0
    return -num_tokens % chunk_size


def retention(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        log_decay: torch.Tensor,
        mode: RetentionMode = 'parallel',
        direction: Direction = 'causal',
        chunk_size: int = 64,
        kernel: Kernel = 'auto',
        positions: Optional[torch.Tensor] = None,
        decay: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Multi-head retention of q, k [B, H, N, d] and v [B, H, N, dv] with per-head ``log_decay`` [H].

    ``q`` must already carry the d^-1/2 scale; ``log_decay`` must be on q's device in
    ``decay_dtype(q)`` (``Retention`` caches it so). Returns [B, H, N, dv]. The options are not
    re-checked here: validate them once with ``check_retention``. ``kernel`` picks the chunkwise
    implementation: 'fla' (flash-linear-attention's Triton kernels, CUDA only), 'torch' (the
    pure-PyTorch form here), or 'auto' (fla for CUDA tensors when installed, torch otherwise).

    ``positions`` [B or 1, N], non-decreasing, are the tokens' places in the sequence the decay counts
    (default 0..N-1): a subset of a sequence, gathered in order with its original positions, gets
    exactly the outputs it has inside the whole sequence with every other key zeroed. This is how
    adaptive inference removes tokens without changing the distances between the ones it keeps.
    The fla kernels take the default positions only; with others, 'auto' runs the PyTorch form.

    ``decay``: the parallel form's ``parallel_decay`` for these positions, if already built (``Retention``
    takes it from ``cached_parallel_decay``); the other forms do not use it.
    """
    if q.shape[-2] == 0:
        return v.new_zeros(v.shape)
    mode = resolve_mode(mode, q.shape[-2])
    if mode == 'parallel':
        return retention_parallel(q, k, v, log_decay, direction, positions, decay)
    if mode == 'recurrent':
        return _recurrent_causal(q, k, v, log_decay, positions) if direction == 'causal' else \
            _bidirectional(_recurrent_causal, q, k, v, log_decay, positions)
    if positions is not None and kernel == 'fla':
        raise ValueError("retention kernel 'fla' takes the default token positions only; use kernel 'auto'")
    if positions is None and _use_fla(kernel, q):
        return causal_retention_fla(q, k, v, log_decay) if direction == 'causal' else \
            _bidirectional(lambda q, k, v, log_decay, _: causal_retention_fla(q, k, v, log_decay), q, k, v, log_decay)
    if direction == 'causal':
        return _chunkwise_causal(q, k, v, log_decay, chunk_size, positions)
    return _chunkwise_bidirectional(q, k, v, log_decay, chunk_size, positions)


def causal_retention_step(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, state: Optional[torch.Tensor],
        mode: RetentionMode = 'auto', chunk_size: int = 64, kernel: Kernel = 'auto',
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Causal retention of a segment q, k [B, H, n, d], v [B, H, n, dv] that continues a sequence whose earlier
    tokens ``state`` sums (S = sum_m gamma^(last - m) k_m^T v_m, [B, H, d, dv] in ``decay_dtype(q)``; None at its
    start). Returns the segment's outputs, exactly those it has inside the whole sequence, and the state after it:
    the recurrent form one segment at a time, each segment in any form (streaming, as RetNet's chunkwise)."""
    n = q.shape[2]
    out = retention(q, k, v, log_decay, mode=mode, direction='causal', chunk_size=chunk_size, kernel=kernel)
    with _full_precision(q):
        dtype = decay_dtype(q)
        offset = torch.arange(n, device=q.device, dtype=dtype)[None, None]  # [1, 1, n]
        if state is not None:  # token i of the segment is i + 1 past the state's last token
            read = (q.to(dtype) @ state).mul_(_decay_pow(log_decay, offset + 1)[..., None])
            out = out + read.to(out.dtype)
        update = (k.to(dtype) * _decay_pow(log_decay, n - 1 - offset)[..., None]).transpose(-1, -2) @ v.to(dtype)
        if state is not None:
            update = torch.addcmul(update, state, _decay_pow(log_decay, offset.new_full((1, 1), n))[..., None, None])
    return out, update

