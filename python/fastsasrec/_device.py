"""Device selection: "auto" | "cpu" | "cuda", and the probe behind cuda_available()."""
from __future__ import annotations

from typing import Tuple

VALID_DEVICES = ("auto", "cpu", "cuda")


def cuda_status() -> Tuple[bool, str]:
    """(usable, reason): whether the CUDA backend can run now, and why not when it cannot."""
    from fastsasrec import _core

    ok, why = _core.backend_available("cuda")
    return bool(ok), "" if ok else str(why)


def resolve_device(device: str) -> str:
    """Maps the user's device string to a backend name, or raises ValueError."""
    if not isinstance(device, str) or device not in VALID_DEVICES:
        raise ValueError(f"device must be one of {VALID_DEVICES}, got {device!r}")
    if device == "cpu":
        return "cpu"
    ok, why = cuda_status()
    if device == "cuda":
        if not ok:
            raise ValueError(f"device='cuda' is not available: {why}. Use device='cpu' or 'auto'.")
        return "cuda"
    return "cuda" if ok else "cpu"
