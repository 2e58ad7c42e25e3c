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
  3. every other band: across bands the y decay factorises, so each column carries a band state, and the
     columns' states are mixed by the whole x decay (exactly, tile-wise: in-tile matrix plus a scan).

  Its cost is linear in the number of patches: states of d x dv per row and per column of every tile.

Both forms keep decays and states in float32 (float64 for float64 inputs) from non-positive exponents only,
so they are as bf16-safe as the 1D forms. Patches only: ``Retention`` adds how a class token reads them.
"""
import math
from typing import Literal, Tuple, get_args

import torch
import torch.nn.functional as F

from ..errors import check_choice
from .retention import _full_precision, _scan, decay_dtype, parallel_decay

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
    """gamma_h ** exponents for non-negative exponents [L], shape [H, L]."""
    return torch.exp(log_decay[:, None] * exponents.to(log_decay.dtype))


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


def _mix_rows(states: torch.Tensor, log_decay: torch.Tensor, direction: str, whole: bool) -> torch.Tensor:
    """states [B, H, C1, R1, R2, E] of rows r = (R1 block, R2 offset) -> sum over r' of Dy(r, r') states[r'],
    within each block only or (``whole``) over all rows: the in-block matrix, plus scans over the blocks'
    decayed sums (the 1D chunkwise recurrence, on states instead of values)."""
    b, h, c1, r1, r2, e = states.shape
    out = _axis_decay(log_decay, r2, direction)[None, :, None, None] @ states
    if not whole or r1 == 1:
        return out
    offset = torch.arange(r2, device=states.device)
    flows = [(False, r2 - 1 - offset, offset + 1)]  # from the blocks above, decayed to each block's last row
    if direction == 'bidirectional':
        flows.append((True, offset, r2 - offset))  # from the blocks below, to each block's first row
    block_decay = _powers(log_decay, torch.tensor([r2], device=states.device))[None].expand(1, h, r1)
    for reverse, to_edge, from_edge in flows:
        sums = (_powers(log_decay, to_edge)[None, :, None, None, None] @ states)[:, :, :, :, 0]  # [B, H, C1, R1, E]
        entering = _scan(sums.transpose(2, 3).contiguous(), block_decay, reverse)  # [B, H, R1, C1, E]
        out.addcmul_(entering.transpose(2, 3)[:, :, :, :, None], _powers(log_decay, from_edge)[None, :, None, None,
                                                                                                :, None])
    return out


def _across_chunks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, direction: str,
                   whole: bool) -> torch.Tensor:
    """What queries read from keys in the other chunks of their axis, for tiles laid out [B, H, C1, R1, R2, C2, d]
    (C1 chunks of C2 along the chunked axis, rows R1 x R2 along the other): each row's chunk states (as 1D
    chunkwise along the chunked axis), mixed across rows by ``_mix_rows``; returns the same layout."""
    b, h, c1, r1, r2, c2, d = q.shape
    dv = v.shape[-1]
    out = q.new_zeros(b, h, c1, r1, r2, c2, dv)
    if c1 == 1:
        return out
    offset = torch.arange(c2, device=q.device)
    chunk_decay = _powers(log_decay, torch.tensor([c2], device=q.device))[None].expand(1, h, c1)
    flows = [(False, c2 - 1 - offset, offset + 1)]  # from earlier chunks, decayed to each chunk's last token
    if direction == 'bidirectional':
        flows.append((True, offset, c2 - offset))  # from later chunks, to each chunk's first token
    for reverse, to_edge, from_edge in flows:
        updates = (k * _powers(log_decay, to_edge)[None, :, None, None, None, :, None]).transpose(-1, -2) @ v
        states = _scan(updates.view(b, h, c1, r1 * r2 * d, dv), chunk_decay, reverse)
        states = _mix_rows(states.view(b, h, c1, r1, r2, d * dv), log_decay, direction, whole)
        read = q @ states.view(b, h, c1, r1, r2, d, dv)
        out.addcmul_(read, _powers(log_decay, from_edge)[None, :, None, None, None, :, None])
    return out


def retention_2d_chunkwise(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, grid: Grid,
                           direction: str = 'bidirectional', tile: int = 8, scale: float = 1.0) -> torch.Tensor:
    """Linear-cost form over ``tile x tile`` patch tiles (see the module docstring); equal to the parallel form."""
    b, h, n, d = q.shape
    dv = v.shape[-1]
    rows, cols = grid
    a, c = min(tile, rows), min(tile, cols)
    nb, nc = math.ceil(rows / a), math.ceil(cols / c)
    out_dtype = torch.promote_types(q.dtype, v.dtype)
    with _full_precision(q):
        dtype = decay_dtype(q)

        def tiles(t: torch.Tensor) -> torch.Tensor:  # [B, H, N, e] -> [B, H, nb, a, nc, c, e], zero-padded
            t = F.pad(t.to(dtype).view(b, h, rows, cols, -1), (0, 0, 0, nc * c - cols, 0, nb * a - rows))
            return t.view(b, h, nb, a, nc, c, t.shape[-1])

        q, k, v = tiles(q * scale if scale != 1 else q), tiles(k), tiles(v)
        # 1. inside each tile
        dy, dx = _axis_decay(log_decay, a, direction), _axis_decay(log_decay, c, direction)
        tile_decay = torch.einsum('hab,hcd->hacbd', dy, dx).reshape(h, a * c, a * c)[None, :, None, None]
        by_tile = [t.permute(0, 1, 2, 4, 3, 5, 6).reshape(b, h, nb, nc, a * c, -1) for t in (q, k, v)]
        out = ((by_tile[0] @ by_tile[1].transpose(-1, -2)) * tile_decay) @ by_tile[2]
        out = out.view(b, h, nb, nc, a, c, dv).permute(0, 1, 2, 4, 3, 5, 6)  # [B, H, nb, a, nc, c, dv]
        # 2. the other column chunks of the band: chunked along x, rows mixed inside the band
        along_x = [t.permute(0, 1, 4, 2, 3, 5, 6) for t in (q, k, v)]  # [B, H, nc, nb, a, c, e]
        out = out + _across_chunks(*along_x, log_decay, direction, whole=False).permute(0, 1, 3, 4, 2, 5, 6)
        # 3. the other bands: chunked along y, columns mixed over the whole width
        along_y = [t.permute(0, 1, 2, 4, 5, 3, 6) for t in (q, k, v)]  # [B, H, nb, nc, c, a, e]
        out = out + _across_chunks(*along_y, log_decay, direction, whole=True).permute(0, 1, 2, 5, 3, 4, 6)
        out = out.reshape(b, h, nb * a, nc * c, dv)[:, :, :rows, :cols]
        return out.reshape(b, h, n, dv).to(out_dtype)


def retention_2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor, grid: Grid,
                 mode: str = 'chunkwise', direction: str = 'bidirectional', tile: int = 8,
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
    """The 2D form's square tile side for a 1D ``chunk_size``: tiles of about as many patches as a chunk."""
    return max(1, math.isqrt(chunk_size))


def read_all(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """What tokens without a grid position (the class token) read: every token, undecayed, q (sum_m k_m^T v_m)."""
    dtype = decay_dtype(q)
    with _full_precision(q):
        summary = k.to(dtype).transpose(-1, -2) @ v.to(dtype)
        return (q.to(dtype) @ summary).mul_(scale).to(torch.promote_types(q.dtype, v.dtype))
