"""fastsasrec: fast SASRec next-item recommendation (C++ engine, CPU + optional CUDA)."""
from fastsasrec._loader import load_core as _load_core

_core = _load_core()

__version__ = "0.1.0"
