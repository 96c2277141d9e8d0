"""The engine's weights by tensor name (``engine.tensors()``: name, offset, shape): read one,
replace one, or zero some of its rows (a new product's id embedding).  Each call copies
the flat parameters once; the optimizer state is left alone."""
from __future__ import annotations

import math
from typing import Any, Tuple

import numpy as np


def _tensor_view(engine: Any, tensor: str) -> Tuple[np.ndarray, np.ndarray]:
    layout = {n: (int(o), tuple(int(x) for x in s)) for n, o, s in engine.tensors()}
    off, shape = layout[tensor]
    flat = engine.get_params()
    return flat, flat[off:off + math.prod(shape)].reshape(shape)


def tensor_rows(engine: Any, tensor: str) -> np.ndarray:
    """One of the engine's tensors (the weights), as a copy."""
    return _tensor_view(engine, tensor)[1].copy()


def set_tensor(engine: Any, tensor: str, value: np.ndarray) -> None:
    """Replaces one of the engine's tensors (the weights only; same shape)."""
    flat, view = _tensor_view(engine, tensor)
    view[...] = value
    engine.set_params(flat)


def zero_rows(engine: Any, tensor: str, rows: np.ndarray) -> None:
    """Sets rows of one of the engine's tensors to zero (the weights only)."""
    if rows.size == 0:
        return
    flat, view = _tensor_view(engine, tensor)
    view[rows] = 0.0
    engine.set_params(flat)
