"""Exact 2D retention: a softmax-free decay by Manhattan distance on the patch grid, in linear cost.

Raster-order 1D retention puts the patch directly above 64 tokens back on a 64-wide grid, so fast-decaying heads
barely see vertical neighbours. 2D retention decays by grid distance instead: patch n at (y, x) reads patch m
at (y', x') with weight

    bidirectional: gamma^(|y - y'| + |x - x'|)
    causal:        gamma^((y - y') + (x - x')) for keys up-and-left (y' <= y and x' <= x), 0 otherwise

(RMT puts such a decay inside a softmax and loses every linear form; here there is no softmax). The decay
is separable, D = Dy (x) Dx, which gives two forms that compute the same numbers:

* ``parallel``: the N x N decay matrix, the reference (and the fast form for short sequences);
* ``chunkwise``: tiles of ``tile x tile`` patches, never an N x N tensor. Keys reach a query through
  three disjoint parts:

  1. its own tile: the tile's (tile^2 x tile^2) decayed scores, as 1D chunkwise does inside a chunk;
  2. the other tiles of its band of rows: across column chunks the x decay factorises, so each row carries
     a chunk state (as 1D chunkwise along the row) and the rows' states are mixed by the in-band y decay;
  3. every other band: across bands the y decay factorises, so each column carries a state from band to band
     (down, and up for bidirectional), and the columns' states are mixed by the whole x decay (exactly,
     tile-wise: in-tile matrix plus a scan).

  Its cost is linear in the number of patches, but exactness has a price 1D does not pay: a cut across the
  grid must carry one d x dv state per row (or column) it crosses, not one per chunk, so the states of 2D
  are N d dv (1/a + 1/c) against 1D's N d dv / C. Measured: see the README's 2D section.

Both forms keep decays and states in float32 (float64 for float64 inputs) from non-positive exponents only,
so they are as bf16-safe as the 1D forms. Patches only: ``Retention`` adds how a class token reads them.
"""
import math
from typing import Literal, Tuple, get_args

import torch
import torch.nn.functional as F

from ..errors import check_choice
from .retention import _decay_pow, _full_precision, _scan, decay_dtype, parallel_decay

Grid = Tuple[int, int]
Geometry = Literal['1d', '2d']
GEOMETRIES = get_args(Geometry)


def check_geometry(geometry: str, mode: str, kernel: str) -> None:
    """Validate a retention geometry against the form and kernel it runs with (once, at build)."""
    check_choice('retention geometry', geometry, GEOMETRIES)
    if geometry == '2d' and mode == 'recurrent':
        raise ValueError("geometry '2d' has the 'parallel' and 'chunkwise' forms (and 'auto'); 'recurrent' is the "
                         "1D raster-order recurrence: use retention_mode 'chunkwise' or 'auto'")
    if geometry == '2d' and kernel == 'fla':
        raise ValueError("geometry '2d' runs on the PyTorch forms only: use retention kernel 'auto' or 'torch'")


def _axis_decay(log_decay: torch.Tensor, length: int, direction: str) -> torch.Tensor:
    """The 1D decay along one grid axis, [H, length, length]."""
    return parallel_decay(log_decay, torch.arange(length, device=log_decay.device, dtype=log_decay.dtype)[None],
                          direction)[0]


def _powers(log_decay: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """gamma_h ** exponents for non-negative exponents of any shape, shape [H, *exponents.shape] (1D's
    ``_decay_pow`` without its batch axis)."""
    return _decay_pow(log_decay, exponents.to(log_decay.dtype)[None, None])[0]


def parallel_decay_2d(log_decay: torch.Tensor, grid: Grid, direction: str) -> torch.Tensor:
    """The N x N decay [H, N, N] between the patches of a ``grid`` in raster order: Dy (x) Dx."""
    dy, dx = (_axis_decay(log_decay, n, direction) for n in grid)
    return torch.einsum('hab,hcd->hacbd', dy, dx).reshape(len(log_decay), grid[0] * grid[1], grid[0] * grid[1])


def retention_2d_parallel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, grid: Grid,
                          direction: str = 'bidirectional', scale: float = 1.0) -> torch.Tensor:
    """Parallel form, the reference: (Q K^T * D scale) V with D = ``parallel_decay_2d``."""
    decay = parallel_decay_2d(log_decay, grid, direction)
    scores = (q @ k.transpose(-1, -2)).mul_(decay if scale == 1 else decay * scale)
    return (scores.to(v.dtype) @ v).to(torch.promote_types(q.dtype, v.dtype))


def _mix_columns(states: torch.Tensor, log_decay: torch.Tensor, direction: str) -> torch.Tensor:
    """Per-column states [B, H, nc, c, E] (column chunks of c) -> sum over columns x' of Dx(x, x') states[x']
    over the whole width: the in-chunk matrix, plus scans over the chunks' decayed sums (the 1D chunkwise
    recurrence, on states instead of values)."""
    b, h, nc, c, e = states.shape
    out = _axis_decay(log_decay, c, direction)[None, :, None] @ states
    if nc == 1:
        return out
    offset = torch.arange(c, device=states.device)
    flows = [(False, c - 1 - offset, offset + 1)]  # from the chunks on the left, decayed to each chunk's last column
    if direction == 'bidirectional':
        flows.append((True, offset, c - offset))  # from the chunks on the right, to each chunk's first column
    chunk_decay = _powers(log_decay, torch.tensor([c], device=states.device))[None].expand(1, h, nc)
    for reverse, to_edge, from_edge in flows:
        sums = _powers(log_decay, to_edge)[None, :, None, None] @ states  # [B, H, nc, 1, E]
        entering = _scan(sums, chunk_decay, reverse)
        out.addcmul_(entering, _powers(log_decay, from_edge)[None, :, None, :, None])
    return out


def _across_chunks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
                   direction: str) -> torch.Tensor:
    """What a band's queries read from its keys in other column chunks, for tiles laid out [B, H, nc, a, c, e]:
    each row's chunk states (as 1D chunkwise along the row), carried across chunks and mixed across the band's
    rows by the y decay. Both directions at once: flow f's updates, carry between chunks [nc, nc], row mix and
    reads are one batched matmul each."""
    b, h, nc, a, c, d = q.shape
    dv = v.shape[-1]
    offset, chunk = torch.arange(c, device=q.device), torch.arange(nc, device=q.device)
    gap = chunk[:, None] - chunk[None, :] - 1  # chunks strictly between query chunk J and key chunk J'
    flows = [(c - 1 - offset, gap, offset + 1)]  # from the chunks on the left, decayed to each chunk's last column
    if direction == 'bidirectional':
        flows.append((offset, -2 - gap, c - offset))  # from the chunks on the right, to each chunk's first column
    to_edge, from_edge = (torch.stack([_powers(log_decay, f[i]) for f in flows], 1) for i in (0, 2))  # [H, F, c]
    between = torch.stack([_powers(log_decay, c * f[1].clamp(min=0)) * (f[1] >= 0) for f in flows], 1)
    updates = (k[:, :, None] * to_edge[None, :, :, None, None, :, None]).transpose(-1, -2) @ v[:, :, None]
    states = between[None] @ updates.view(b, h, len(flows), nc, a * d * dv)  # [B, H, F, nc, a * d * dv]
    states = _axis_decay(log_decay, a, direction)[None, :, None, None] @ states.view(b, h, len(flows), nc, a, d * dv)
    read = q[:, :, None] @ states.view(b, h, len(flows), nc, a, d, dv)  # [B, H, F, nc, a, c, dv]
    return (read * from_edge[None, :, :, None, None, :, None]).sum(2)


def _within_band(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, direction: str,
                 tile_decay: torch.Tensor) -> torch.Tensor:
    """2D retention inside one band [B, H, a, nc, c, e] of ``a`` rows: each tile's own decayed scores (part 1),
    plus the band's other column chunks through per-row chunk states mixed by the in-band y decay (part 2)."""
    b, h, a, nc, c, _ = q.shape
    dv = v.shape[-1]
    by_chunk = [t.transpose(2, 3) for t in (q, k, v)]  # [B, H, nc, a, c, e]
    by_tile = [t.reshape(b, h, nc, a * c, -1) for t in by_chunk]
    out = ((by_tile[0] @ by_tile[1].transpose(-1, -2)).mul_(tile_decay) @ by_tile[2]).view(b, h, nc, a, c, dv)
    if nc > 1:
        out = out + _across_chunks(*by_chunk, log_decay, direction)
    return out.transpose(2, 3)  # [B, H, a, nc, c, dv]


def _column_update(k: torch.Tensor, v: torch.Tensor, to_edge: torch.Tensor) -> torch.Tensor:
    """A band's keys and values by column, [B, H, W, a, e], summed per column and decayed to one edge row:
    [B, H, W, d, dv] (one batched matmul, k read transposed in place)."""
    return (k * to_edge[None, :, None, :, None]).transpose(-1, -2) @ v


def retention_2d_chunkwise(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, grid: Grid,
                           direction: str = 'bidirectional', tile: int = 16, scale: float = 1.0) -> torch.Tensor:
    """Linear-cost form over ``tile x tile`` patch tiles (see the module docstring); equal to the parallel form.

    Bands of ``tile`` rows are taken one at a time, top to bottom (and bottom to top for the bands below), each
    column's state carried from band to band: every tensor is one band's, small enough to stay in cache and in the
    allocator's reuse (whole-image state fields are tens of MB at 2048 px, and writing fresh pages dominated)."""
    b, h, n, d = q.shape
    dv = v.shape[-1]
    rows, cols = grid
    a, c = min(tile, rows), min(tile, cols)
    nb, nc = math.ceil(rows / a), math.ceil(cols / c)
    out_dtype = torch.promote_types(q.dtype, v.dtype)
    with _full_precision(q):
        dtype = decay_dtype(q)

        def padded(t: torch.Tensor) -> torch.Tensor:  # [B, H, N, e] -> [B, H, nb * a, nc, c, e], zero-padded
            t = F.pad(t.to(dtype).view(b, h, rows, cols, -1), (0, 0, 0, nc * c - cols, 0, nb * a - rows))
            return t.view(b, h, nb * a, nc, c, t.shape[-1])

        q, k, v = padded(q * scale if scale != 1 else q), padded(k), padded(v)
        # the same bands by column, [B, H, nb, W, a, e], for the states carried down (and up) the columns
        by_column = [t.view(b, h, nb, a, nc * c, -1).transpose(3, 4).contiguous() for t in (q, k, v)]
        dy, dx = _axis_decay(log_decay, a, direction), _axis_decay(log_decay, c, direction)
        tile_decay = torch.einsum('hab,hcd->hacbd', dy, dx).reshape(h, a * c, a * c)[None, :, None]
        band_decay = _powers(log_decay, torch.tensor([a], device=q.device))[None, :, :, None, None]  # [1, H, 1, 1, 1]
        offset = torch.arange(a, device=q.device)
        flows = [(range(nb), _powers(log_decay, a - 1 - offset), _powers(log_decay, offset + 1))]  # from above
        if direction == 'bidirectional':
            flows.append((range(nb - 1, -1, -1), _powers(log_decay, offset), _powers(log_decay, a - offset)))

        def band(t: torch.Tensor, i: int) -> torch.Tensor:
            return t[:, :, i * a:(i + 1) * a]

        outs = [_within_band(band(q, i), band(k, i), band(v, i), log_decay, direction, tile_decay) for i in range(nb)]
        for order, to_edge, from_edge in flows:
            state = None  # per column, the keys of the bands passed so far, decayed to the current band's edge
            for i in order:
                qb, kb, vb = (t[:, :, i] for t in by_column)
                if state is not None:
                    # columns mixed by the x decay over the whole width (tile-wise: in-tile matrix plus scans)
                    mixed = _mix_columns(state.view(b, h, nc, c, d * dv), log_decay, direction)
                    read = (qb @ mixed.view(b, h, nc * c, d, dv)).mul_(from_edge[None, :, None, :, None])
                    outs[i] = outs[i] + read.transpose(2, 3).view(outs[i].shape)
                update = _column_update(kb, vb, to_edge)
                state = update if state is None else torch.addcmul(update, state, band_decay)
        out = torch.cat(outs, dim=2).view(b, h, nb * a, nc * c, dv)[:, :, :rows, :cols]
        return out.reshape(b, h, n, dv).to(out_dtype)


def retention_2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, grid: Grid,
                 mode: str = 'chunkwise', direction: str = 'bidirectional', tile: int = 16,
                 scale: float = 1.0) -> torch.Tensor:
    """2D retention of the patches q, k [B, H, N, d], v [B, H, N, dv] of a ``grid`` (rows, cols) in raster order,
    with per-head ``log_decay`` [H] in ``decay_dtype(q)``; q times ``scale`` (its d^-1/2). ``mode``: 'parallel'
    or 'chunkwise' (already resolved from 'auto'). Returns [B, H, N, dv]."""
    if grid[0] * grid[1] != q.shape[-2]:
        raise ValueError(f"2D retention got {q.shape[-2]} patches for a {grid[0]}x{grid[1]} grid")
    if mode == 'parallel':
        return retention_2d_parallel(q, k, v, log_decay, grid, direction, scale)
    return retention_2d_chunkwise(q, k, v, log_decay, grid, direction, tile, scale)


def tile_side(chunk_size: int) -> int:
    """The 2D form's square tile side for a 1D ``chunk_size``: tiles of four chunks' worth of patches (16 x 16 for
    chunk 64; ViR-T at 2048 px, 2 CPU threads: 159 ms a retention at side 16, 164 at 12, 212 at 24, 268 at 32)."""
    return max(1, math.isqrt(4 * chunk_size))


def read_all(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """What tokens without a grid position (the class token) read: every token, undecayed, q (sum_m k_m^T v_m)."""
    dtype = decay_dtype(q)
    with _full_precision(q):
        summary = k.to(dtype).transpose(-1, -2) @ v.to(dtype)
        return (q.to(dtype) @ summary).mul_(scale).to(torch.promote_types(q.dtype, v.dtype))
