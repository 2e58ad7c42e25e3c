"""The random streams of a process, saved in checkpoints and restored on resume, so that what draws from
them after a resume (dropout, drop-path, mixup) draws what the uninterrupted run would have drawn.

Lightning saves no random state. Its own helper stores numpy's state as an ndarray, which a
``weights_only`` load refuses; here every part is a tensor or a tuple of ints.
"""
import random
from contextlib import contextmanager
from typing import Any, Dict, Iterator

import numpy as np
import torch


def capture() -> Dict[str, Any]:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {'torch': torch.get_rng_state(), 'python': random.getstate(),
             'numpy': (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    random.setstate(_as_tuples(state['python']))
    kind, keys, position, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])


def _as_tuples(value):
    """random.setstate wants tuples; a checkpoint may hand back lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


@contextmanager
def cpu_streams_kept() -> Iterator[None]:
    """Puts torch's, numpy's and Python's CPU streams back as they were after the block."""
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])
