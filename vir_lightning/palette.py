"""Class colours for data that brings none: fixed, reproducible, the same everywhere they are drawn."""
from typing import List, Tuple

import numpy as np


def default_palette(num_classes: int) -> List[Tuple[int, int, int]]:
    """``num_classes`` RGB colours drawn from a fixed seed."""
    rng = np.random.default_rng(0)
    return [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(num_classes)]
