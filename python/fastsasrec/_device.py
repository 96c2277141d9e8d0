"""Device selection: "auto" | "cpu" | "cuda" | "cuda:N", and the probe behind
cuda_available()."""
from __future__ import annotations

import re
import warnings
from typing import Any, Dict, Optional, Tuple

VALID_DEVICES = ("auto", "cpu", "cuda", "cuda:N")
_CUDA_N = re.compile(r"cuda:(0|[1-9][0-9]{0,8})")


def is_device(device: Any) -> bool:
    """Whether ``device`` is a device string fastsasrec knows (usable or not)."""
    return isinstance(device, str) and (device in ("auto", "cpu", "cuda") or bool(_CUDA_N.fullmatch(device)))


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
    if not is_device(device):
        raise ValueError(f"device must be one of {VALID_DEVICES} (N a GPU's index), got {device!r}")
    if device == "cpu":
        return "cpu"
    ok, why = cuda_status()
    if device.startswith("cuda"):
        if ok and device != "cuda":
            from fastsasrec import _core

            ok, why = _core.backend_available(device)
        if not ok:
            raise ValueError(f"device={device!r} is not available: {why}. Use device='cpu' or 'auto'.")
        return device
    if not ok:
        return "cpu"
    if config is not None:
        from fastsasrec import _core

        why = _core.device_unsupported("cuda", config)
        if why:
            warnings.warn(f"device='auto' runs this model on the CPU: {why}", stacklevel=3)
            return "cpu"
    return "cuda"
