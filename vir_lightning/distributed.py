"""Distributed runs: per-image results merged through the Lightning strategy, and a clean exit."""
import atexit
from typing import Any, Dict, Optional

import torch.distributed
from lightning.pytorch.strategies import Strategy


def gather_on_rank_zero(strategy: Optional[Strategy], results: Dict[Any, Any]) -> Dict[Any, Any]:
    """The ``results`` dicts of all processes merged on rank 0 (empty elsewhere), by key, so that an
    image the distributed sampler repeated counts once; without a strategy or with one process,
    ``results`` itself.

    Lightning's strategies gather tensors only; per-image results of varying size are objects, so
    each rank broadcasts its own in turn (one collective per rank: a handful, not one per image).
    """
    if strategy is None or strategy.world_size == 1:
        return results
    merged: Dict[Any, Any] = {}
    for rank in range(strategy.world_size):
        part = strategy.broadcast(results if strategy.global_rank == rank else None, src=rank)
        if strategy.is_global_zero:
            merged.update(part)
    return merged


def destroy_process_group_at_exit() -> None:
    """Destroy the default process group when the process exits, whatever its backend (idempotent).

    Lightning does this for NCCL only. A gloo group left alive at exit keeps C++ worker threads that
    outlive the interpreter, and the process now and then aborts at exit with "terminate called
    without an active exception" after a successful run (pytorch/pytorch#190489), failing the run.
    """
    global _exit_hook_registered
    if not _exit_hook_registered and torch.distributed.is_available() and torch.distributed.is_initialized():
        atexit.register(_destroy_process_group)
        _exit_hook_registered = True


_exit_hook_registered = False


def _destroy_process_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
