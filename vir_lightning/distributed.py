"""Per-image results of every process, merged through the Lightning strategy (no torch.distributed calls)."""
from typing import Any, Dict, Optional

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
