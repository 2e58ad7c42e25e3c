"""Causal chunkwise retention on the GPU with the Triton kernels of flash-linear-attention (the ``gpu`` extra).

fla's ``chunk_simple_gla`` is causal linear attention with one scalar decay per head, given as its
log (``g_gamma``): with the model's own per-head log decay it is exactly causal retention, for any
decay schedule (fla's ``chunk_retention`` hard-codes RetNet's). ``retention.py`` builds the
bidirectional form from it (forward + flipped backward - diagonal), as for the recurrent form.

What the kernels do differently from the PyTorch forms (fla-core 0.6.0, the tested version):
they take [B, T, H, d] inputs and have their own backward pass; they use their own chunk of 64
tokens and ignore the model's ``chunk_size``; with bf16 inputs the per-chunk states are stored
in bf16 in the forward pass (accumulation is float32; the PyTorch forms keep states in float32);
float32 inputs run their matmuls in TF32 on Hopper (errors about 1e-3). They run on CUDA only.
"""
import functools
import importlib.util

import torch


@functools.lru_cache(maxsize=None)
def fla_available() -> bool:
    """flash-linear-attention is installed and a CUDA device is present."""
    return importlib.util.find_spec('fla') is not None and torch.cuda.is_available()


@functools.lru_cache(maxsize=None)
def _chunk_simple_gla():
    from fla.ops.simple_gla import chunk_simple_gla
    return chunk_simple_gla


def causal_retention_fla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor) -> torch.Tensor:
    """Causal retention of q, k [B, H, N, d], v [B, H, N, dv] (q pre-scaled by d^-1/2) with fla's kernel."""
    out, _ = _chunk_simple_gla()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                 g_gamma=log_decay.float(), scale=1.0)  # q already carries d^-1/2
    return out.transpose(1, 2)
