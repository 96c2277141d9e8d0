"""What a checkpoint records of the fit that wrote it, and the check that a resumed fit is
that fit: the same data (ids, order, item features) and the same parameters, but those
that alter neither the weights nor their order."""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Any, Dict, Optional

import numpy as np

# The parameters a resumed fit may change: they alter neither the weights nor their order.
_RESUME_FREE = ("iterations", "verbose", "num_threads", "device")


def _fingerprint(flat: np.ndarray, offsets: np.ndarray, feats: Any = None) -> Dict[str, Any]:
    """What a checkpoint records of its training data: the SHA-256 of the ids (their type,
    then their values), the offsets and the item features (their vocabularies and each
    item's values), with the counts to name in an error."""
    h = hashlib.sha256()
    if feats is not None:
        h.update(json.dumps(feats.space.to_json(), sort_keys=True).encode())
        h.update(np.ascontiguousarray(feats.values, dtype="<i4").tobytes())
        h.update(np.ascontiguousarray(feats.offsets, dtype="<i8").tobytes())
    if flat.dtype.kind == "U":
        h.update(b"str")
        h.update(np.char.str_len(flat).astype("<i8").tobytes())
        h.update("".join(flat.tolist()).encode("utf-8", "surrogatepass"))
    else:
        h.update(b"int")
        h.update(np.ascontiguousarray(flat, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(offsets.astype("<i8")).tobytes())
    return {"sha256": h.hexdigest(), "n_sequences": int(offsets.size - 1), "n_events": int(flat.size)}


def _check_resumable(ck: Dict[str, Any], path: Any, params: Dict[str, Any],
                     fingerprint: Dict[str, Any], patience: Optional[int]) -> None:
    """A checkpoint continues only the fit it was written by: the same data, the same
    parameters (but those of _RESUME_FREE)."""
    saved = ck["fingerprint"]
    if saved.get("sha256") != fingerprint["sha256"]:
        raise ValueError(
            f"resume: checkpoint {os.fspath(path)!r} was written for other training data "
            f"({saved.get('n_sequences')} sequences, {saved.get('n_events')} events; these are "
            f"{fingerprint['n_sequences']} and {fingerprint['n_events']}, or the same counts in "
            "another order or with other ids, or other item_features): give the sequences "
            "and the item_features it was trained on"
        )
    differ = [f"{k}={params[k]!r} (checkpoint: {ck['params'].get(k)!r})"
              for k in sorted(params) if k not in _RESUME_FREE and ck["params"].get(k) != params[k]]
    if differ:
        raise ValueError(f"resume: checkpoint {os.fspath(path)!r} was written with other parameters: "
                         + ", ".join(differ) + "; set them as they were (only " +
                         ", ".join(_RESUME_FREE) + " may change)")
    if ck["early_stopping"]["best_score"] is not None and patience is None \
            and params.get("iterations") != "auto":
        warnings.warn("resume: the checkpoint holds an early-stopping state; without "
                      "early_stopping_patience and validation, training runs to iterations",
                      stacklevel=4)
