"""Chunkwise retention on the GPU with the Triton kernels of flash-linear-attention (the ``gpu`` extra).

fla's ``chunk_simple_gla`` is causal linear attention with one scalar decay per head, given as its
log (``g_gamma``): with the model's own per-head log decay it is exactly causal retention, for any
decay schedule (fla's ``chunk_retention`` hard-codes RetNet's). Bidirectional retention is the
forward pass plus the flipped backward pass minus the diagonal both count. The kernels take
[B, T, H, d] inputs, keep decays and states in float32, and have their own backward pass.
They run on CUDA only; ``retention`` falls back to the PyTorch forms elsewhere.
"""
import functools
import importlib.util

import torch


@functools.lru_cache(maxsize=None)
def fla_available() -> bool:
    """flash-linear-attention is installed and a CUDA device is present."""
    return importlib.util.find_spec('fla') is not None and torch.cuda.is_available()


def _causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor) -> torch.Tensor:
    from fla.ops.simple_gla import chunk_simple_gla
    out, _ = chunk_simple_gla(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                              g_gamma=log_decay.float(), scale=1.0)  # q already carries d^-1/2
    return out.transpose(1, 2)


def retention_fla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
                  direction: str = 'causal') -> torch.Tensor:
    """Retention of q, k [B, H, N, d], v [B, H, N, dv] (q pre-scaled) with fla's chunked kernel."""
    forward = _causal(q, k, v, log_decay)
    if direction == 'causal':
        return forward
    backward = _causal(q.flip(2), k.flip(2), v.flip(2), log_decay).flip(2)
    return forward + backward - (q * k).sum(-1, keepdim=True) * v
