"""Device selection: "auto" | "cpu" | "cuda", and the probe behind cuda_available()."""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Tuple

VALID_DEVICES = ("auto", "cpu", "cuda")


def cuda_status() -> Tuple[bool, str]:
    """(usable, reason): whether the CUDA backend can run now, and why not when it cannot."""
    from fastsasrec import _core

    ok, why = _core.backend_available("cuda")
    return bool(ok), "" if ok else str(why)


def resolve_device(device: str, config: Optional[Dict[str, Any]] = None) -> str:
    """Maps the user's device string to a backend name, or raises ValueError.

    With the engine ``config`` of the model to build: "auto" takes the GPU only when it can
    run that model (the CUDA attention's limits on max_seq and the head width), and says
    why when it falls back to the CPU; "cuda" leaves the refusal, with its reason, to the
    engine."""
    if not isinstance(device, str) or device not in VALID_DEVICES:
        raise ValueError(f"device must be one of {VALID_DEVICES}, got {device!r}")
    if device == "cpu":
        return "cpu"
    ok, why = cuda_status()
    if device == "cuda":
        if not ok:
            raise ValueError(f"device='cuda' is not available: {why}. Use device='cpu' or 'auto'.")
        return "cuda"
    if not ok:
        return "cpu"
    if config is not None:
        from fastsasrec import _core

        why = _core.device_unsupported("cuda", config)
        if why:
            warnings.warn(f"device='auto' runs this model on the CPU: {why}", stacklevel=3)
            return "cpu"
    return "cuda"
