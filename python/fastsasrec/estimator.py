"""The SASRec estimator: the public Python API over the C++ engine."""
from __future__ import annotations

import contextlib
import io
import json
import math
import numbers
import os
import tempfile
import time
import warnings
import zipfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fastsasrec import _core
from fastsasrec._device import resolve_device
from fastsasrec.data import (
    check_ids_compatible,
    drop_unknown,
    encode,
    flatten_sequences,
    transactions_to_sequences,
)

FORMAT_NAME = "fastsasrec"
FORMAT_VERSION = 1
_LOSSES = ("auto", "sampled_softmax", "softmax", "bce")
# loss="auto" uses the full softmax up to this many items (where it costs at most about
# twice the sampled softmax on a CPU and is the most accurate loss), sampled_softmax above.
AUTO_SOFTMAX_MAX_ITEMS = 2048

# name -> (kind, check, description); kind is "int", "float" or "other"
_PARAMS = {
    "factors": ("int", lambda v: v >= 1, ">= 1"),
    "n_layers": ("int", lambda v: 0 <= v <= 300, "in 0..300"),
    "n_heads": ("int", lambda v: v >= 1, ">= 1"),
    "max_seq": ("int", lambda v: 1 <= v <= 65536, "in 1..65536"),
    "dropout": ("float", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "n_negatives": ("int", lambda v: v >= 1, ">= 1"),
    "learning_rate": ("float", lambda v: v > 0.0, "> 0"),
    "weight_decay": ("float", lambda v: v >= 0.0, ">= 0"),
    "batch_size": ("int", lambda v: v >= 1, ">= 1"),
    "iterations": ("int", lambda v: v >= 0, ">= 0"),
    "num_threads": ("int", lambda v: v >= 0, ">= 0 (0 = all cores)"),
    "verbose": ("int", lambda v: v >= 0, ">= 0"),
}


_PRECISIONS = ("fp32", "bf16")


def _check_param(name: str, value: Any) -> Any:
    if name == "loss":
        if value not in _LOSSES:
            raise ValueError(f"loss must be one of {_LOSSES}, got {value!r}")
        return value
    if name == "device":
        resolve_device(value)  # raises with the reason
        return value
    if name == "precision":
        if value not in _PRECISIONS:
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {value!r}")
        return value
    if name == "random_state":
        if value is None:
            return None
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
                or not 0 <= value < 2**63:
            raise ValueError(f"random_state must be an integer in [0, 2**63) or None, got {value!r}")
        return int(value)
    kind, ok, desc = _PARAMS[name]
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be {'an integer' if kind == 'int' else 'a number'} {desc}, got {value!r}")
    if kind == "int":
        if not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be an integer {desc}, got {value!r}")
        value = int(value)
    else:
        if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise ValueError(f"{name} must be a finite number {desc}, got {value!r}")
        value = float(value)
    if not ok(value):
        raise ValueError(f"{name} must be {desc}, got {value!r}")
    return value


@contextlib.contextmanager
def _threads(n: int):
    """Runs the engine with n OpenMP threads (0: leave the default), then restores it."""
    if not n:
        yield
        return
    before = _core.ops.num_threads()
    if before == n:
        yield
        return
    _core.ops.set_num_threads(int(n))
    try:
        yield
    finally:
        _core.ops.set_num_threads(before)


class _progress:
    """A tqdm bar (epoch, loss, tokens/s) when verbose and tqdm is installed, one printed
    line per epoch when verbose without it, nothing otherwise."""

    def __init__(self, epochs: int, verbose: int) -> None:
        self.epochs, self.verbose, self.bar = epochs, verbose, None
        if verbose:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=epochs, desc="SASRec", unit="epoch")
            except ImportError:
                pass

    def update(self, logs: Dict[str, Any]) -> None:
        if not self.verbose:
            return
        extra = {"loss": f"{logs['loss']:.4f}", "tok/s": f"{logs['tokens_per_s']:,.0f}"}
        if "val_NDCG@10" in logs:
            extra["val NDCG@10"] = f"{logs['val_NDCG@10']:.4f}"
        if self.bar is not None:
            self.bar.set_postfix(extra)
            self.bar.update(1)
        else:
            print(f"epoch {logs['epoch']}/{self.epochs}  " + "  ".join(f"{k} {v}" for k, v in extra.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _is_cupy(x: Any) -> bool:
    """A CuPy array, recognised without importing CuPy."""
    return type(x).__module__.split(".")[0] == "cupy" and hasattr(x, "__cuda_array_interface__")


class SASRec:
    """SASRec (Kang & McAuley, 2018): next-item recommendation from an ordered session.

    Parameters
    ----------
    factors : int
        Width of the item embeddings and hidden states.
    n_layers, n_heads : int
        Transformer blocks and attention heads (``factors % n_heads == 0``).
    max_seq : int
        How many of the most recent items the model reads.
    dropout : float
        Dropout rate on embeddings, attention probabilities and feed-forward layers.
        The paper used 0.2 on dense data (MovieLens-1M) and 0.5 on sparse data; short
        sessions are sparse, so the default sits between.
    loss : {"auto", "sampled_softmax", "softmax", "bce"}
        ``softmax`` is full cross-entropy over the catalogue (the most accurate);
        ``sampled_softmax`` uses ``n_negatives`` uniform negatives shared across a batch
        (cost independent of the catalogue); ``bce`` is the paper's loss (one sampled
        negative per position).  ``auto`` picks ``softmax`` for catalogues of up to
        2,048 items and ``sampled_softmax`` above; ``loss_`` says which was used.
    n_negatives : int
        Negatives per batch for ``sampled_softmax``; must be smaller than the catalogue.
    learning_rate, weight_decay : float
        AdamW settings (betas 0.9 / 0.98); weight decay applies to matrices and embeddings.
    batch_size : int
        Sequences per training step.
    iterations : int
        Training epochs.  Each epoch uses every sequence's most recent ``max_seq + 1``
        items, every position being a target.
    device : {"auto", "cpu", "cuda"}
        ``auto`` picks the GPU when the CUDA backend is compiled in and a GPU is usable.
    random_state : int or None
        Seed of initialisation, shuffling, negatives and dropout.  Results are
        deterministic for a given seed and thread count.
    verbose : int
        1 prints one line per epoch.
    num_threads : int
        CPU threads for the engine; 0 uses the OpenMP default (all cores).
    precision : {"fp32", "bf16"}
        ``fp32`` computes everything in float32 (the GPU matches the CPU to rounding).
        ``bf16`` rounds the operands of the linear layers' matrix products to bfloat16 and
        sums the products in float32 (the GPU's tensor cores); weights, activations,
        attention, losses and the optimizer stay float32.  The CPU computes the same
        rounding, for the same answers, but gains no speed from it.
    """

    def __init__(
        self,
        factors: int = 64,
        n_layers: int = 2,
        n_heads: int = 1,
        max_seq: int = 50,
        dropout: float = 0.3,
        loss: str = "auto",
        n_negatives: int = 256,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: int = 128,
        iterations: int = 50,
        device: str = "auto",
        random_state: Optional[int] = 42,
        verbose: int = 0,
        num_threads: int = 0,
        precision: str = "fp32",
    ) -> None:
        self.factors = _check_param("factors", factors)
        self.n_layers = _check_param("n_layers", n_layers)
        self.n_heads = _check_param("n_heads", n_heads)
        self.max_seq = _check_param("max_seq", max_seq)
        self.dropout = _check_param("dropout", dropout)
        self.loss = _check_param("loss", loss)
        self.n_negatives = _check_param("n_negatives", n_negatives)
        self.learning_rate = _check_param("learning_rate", learning_rate)
        self.weight_decay = _check_param("weight_decay", weight_decay)
        self.batch_size = _check_param("batch_size", batch_size)
        self.iterations = _check_param("iterations", iterations)
        self.device = _check_param("device", device)
        self.random_state = _check_param("random_state", random_state)
        self.verbose = _check_param("verbose", verbose)
        self.num_threads = _check_param("num_threads", num_threads)
        self.precision = _check_param("precision", precision)
        if self.factors % self.n_heads:
            raise ValueError(
                f"factors ({self.factors}) must be divisible by n_heads ({self.n_heads})"
            )
        self._engine = None
        self._seed_used: Optional[int] = None
        self._item_ids: Optional[np.ndarray] = None
        self._popularity: Optional[np.ndarray] = None
        self._emb_cache: Optional[np.ndarray] = None
        self.loss_history_: List[float] = []
        self.history_: List[Dict[str, Any]] = []
        self.best_epoch_: int = 0
        self.loss_: Optional[str] = None
        self._item_map_cache: Optional[Tuple[Dict[Any, int], Dict[int, Any]]] = None

    # ------------------------------------------------------------------ params
    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        return {
            name: getattr(self, name)
            for name in (
                "factors", "n_layers", "n_heads", "max_seq", "dropout", "loss", "n_negatives",
                "learning_rate", "weight_decay", "batch_size", "iterations", "device",
                "random_state", "verbose", "num_threads", "precision",
            )
        }

    def set_params(self, **params: Any) -> "SASRec":
        valid = self.get_params()
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"unknown parameter {k!r}; valid: {sorted(valid)}")
            setattr(self, k, _check_param(k, v))
        if self.factors % self.n_heads:
            raise ValueError(f"factors ({self.factors}) must be divisible by n_heads ({self.n_heads})")
        return self

    def __repr__(self) -> str:
        defaults = SASRec.__init__.__defaults__
        names = list(self.get_params())
        changed = [f"{n}={getattr(self, n)!r}" for n, d in zip(names, defaults) if getattr(self, n) != d]
        return f"SASRec({', '.join(changed)})"

    # ------------------------------------------------------------------ fitting
    def _engine_config(self, n_items: int) -> Dict[str, Any]:
        seed = getattr(self, "_seed_used", None)
        if seed is None:
            seed = self.random_state if self.random_state is not None else int(
                np.random.SeedSequence().generate_state(1)[0]
            )
        return dict(
            n_items=n_items, factors=self.factors, n_heads=self.n_heads, n_layers=self.n_layers,
            max_seq=self.max_seq, dropout=self.dropout, loss=self._resolve_loss(n_items),
            n_negatives=self.n_negatives, learning_rate=self.learning_rate,
            weight_decay=self.weight_decay, batch_size=self.batch_size, seed=seed,
            precision=self.precision,
        )

    def _resolve_loss(self, n_items: int) -> str:
        if self.loss != "auto":
            return self.loss
        return "softmax" if n_items <= AUTO_SOFTMAX_MAX_ITEMS else "sampled_softmax"

    def fit(
        self,
        sequences: Any,
        validation: Optional[Any] = None,
        early_stopping_patience: Optional[int] = None,
        callbacks: Optional[Sequence[Callable[..., Any]]] = None,
    ) -> "SASRec":
        """Trains on sequences of original item ids (oldest first); returns self.

        ``sequences``: a list of lists (or arrays) of item ids, or a pandas Series of
        lists.  Ids are all integers or all strings.  Sequences with fewer than 2 items
        cannot teach anything and are skipped with one warning giving their count.

        ``validation``: sequences scored after every epoch (each one's last item held out,
        full-catalogue NDCG@10, see ``evaluate``); with ``early_stopping_patience`` training
        stops after that many epochs without improvement, and the best epoch's weights
        are restored.  ``callbacks``: callables ``cb(model, epoch, logs)`` run after each
        epoch (``logs``: loss, tokens/s, validation metrics); one returning True stops
        training.  Ctrl-C (KeyboardInterrupt) stops training after the current epoch and
        leaves the model usable with the weights of the last completed epoch.
        """
        flat, offsets = flatten_sequences(sequences, "sequences")
        return self._fit_flat(flat, offsets, validation, early_stopping_patience, callbacks)

    @classmethod
    def from_transactions(
        cls,
        df: Any,
        user_col: Any = "user_id",
        item_col: Any = "item_id",
        timestamp_col: Any = "timestamp",
        **params: Any,
    ) -> "SASRec":
        """Builds one sequence per user from an event log and fits a model on them.

        ``df``: a pandas DataFrame, a polars DataFrame or a pyarrow Table.  Rows are
        sorted stably by user, then by ``timestamp_col`` (numbers or datetimes; None keeps
        the table's order).  ``params``: the constructor's parameters, plus ``fit``'s
        ``validation``, ``early_stopping_patience`` and ``callbacks``.  Returns the fitted
        model."""
        fit_kw = {k: params.pop(k) for k in ("validation", "early_stopping_patience", "callbacks") if k in params}
        model = cls(**params)
        flat, offsets, _ = transactions_to_sequences(df, user_col, item_col, timestamp_col)
        return model._fit_flat(flat, offsets, **fit_kw)

    def _fit_flat(self, flat, offsets, validation=None, early_stopping_patience=None, callbacks=None):
        if early_stopping_patience is not None:
            if isinstance(early_stopping_patience, bool) or not isinstance(early_stopping_patience, numbers.Integral) \
                    or early_stopping_patience < 1:
                raise ValueError(f"early_stopping_patience must be a positive integer, got {early_stopping_patience!r}")
            if validation is None:
                raise ValueError("early_stopping_patience needs validation= data to watch")
        if callbacks is not None and not all(callable(cb) for cb in callbacks):
            raise ValueError("callbacks must be a list of callables cb(model, epoch, logs)")
        n_seq = offsets.size - 1
        if n_seq == 0:
            raise ValueError("sequences is empty: nothing to train on")
        lengths = np.diff(offsets)
        short = lengths < 2
        if short.all():
            raise ValueError(
                f"every one of the {n_seq} sequences has fewer than 2 items: nothing to train on"
            )
        if short.any():
            warnings.warn(
                f"skipped {int(short.sum())} of {n_seq} sequences with fewer than 2 items",
                stacklevel=3,
            )
            keep = np.repeat(~short, lengths)
            flat = flat[keep]
            offsets = np.concatenate(([0], np.cumsum(lengths[~short]))).astype(np.int64)
        item_ids, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        n_items = item_ids.size
        loss = self._resolve_loss(n_items)
        if loss == "sampled_softmax" and self.n_negatives >= n_items:
            raise ValueError(
                f"n_negatives ({self.n_negatives}) must be smaller than the catalogue "
                f"({n_items} items); lower it or use loss='softmax'"
            )
        if loss == "bce" and n_items < 2:
            raise ValueError(f"loss='bce' needs at least 2 distinct items, got {n_items}")
        internal = (inverse.reshape(-1) + 1).astype(np.int32)
        backend = resolve_device(self.device)
        self._seed_used = None
        cfg = self._engine_config(n_items)
        self._seed_used = int(cfg["seed"])
        engine = _core.Model(cfg, backend)
        self._engine = engine
        self.loss_ = loss
        self._item_ids = item_ids
        self._item_map_cache = None
        self._popularity = counts.astype(np.int64)
        self._emb_cache = None
        self.loss_history_ = []
        self.history_ = []
        self._train(internal, offsets, self.iterations, validation, early_stopping_patience, callbacks)
        return self

    def _train(self, internal, offsets, epochs, validation, patience, callbacks) -> None:
        lengths = np.diff(offsets)
        tokens = int((np.minimum(lengths, self.max_seq + 1) - 1).clip(min=0).sum())
        best_score, best_params, best_epoch, since_best = -math.inf, None, 0, 0
        bar = _progress(epochs, self.verbose)
        epoch = 0
        try:
            with _threads(self.num_threads):
                for epoch in range(1, epochs + 1):
                    t0 = time.perf_counter()
                    loss = self._engine.train_epoch(internal, offsets, len(self.loss_history_))
                    dt = time.perf_counter() - t0
                    self.loss_history_.append(float(loss))
                    self._emb_cache = None
                    if not math.isfinite(loss):
                        raise RuntimeError(
                            f"training diverged at epoch {epoch}: loss is {loss}; lower learning_rate"
                        )
                    logs: Dict[str, Any] = {"epoch": epoch, "loss": float(loss),
                                            "tokens_per_s": tokens / max(dt, 1e-9)}
                    if validation is not None:
                        val = self.evaluate(validation, k=10)
                        logs.update({f"val_{k}": v for k, v in val.items() if k.endswith("@10")})
                        score = val["NDCG@10"]
                        if score > best_score:
                            best_score, best_epoch, since_best = score, epoch, 0
                            best_params = self._engine.get_params()
                        else:
                            since_best += 1
                    self.history_.append(logs)
                    bar.update(logs)
                    stop = any(bool(cb(self, epoch, logs)) for cb in (callbacks or []))
                    if patience is not None and since_best >= patience:
                        stop = True
                    if stop:
                        break
        except KeyboardInterrupt:
            warnings.warn(
                f"training interrupted: the model keeps the weights of epoch {len(self.loss_history_)}",
                stacklevel=3,
            )
        finally:
            bar.close()
        if best_params is not None and best_epoch != len(self.loss_history_):
            self._engine.set_params(best_params)
            self._emb_cache = None
        self.best_epoch_ = best_epoch if best_params is not None else len(self.loss_history_)

    # ------------------------------------------------------------------ state
    def _check_fitted(self) -> None:
        if self._engine is None:
            raise RuntimeError("this SASRec model is not fitted yet: call fit() or load() first")

    @property
    def item_ids(self) -> np.ndarray:
        """Original item ids; entry i matches row i of ``item_embeddings``."""
        self._check_fitted()
        return self._item_ids

    @property
    def item_embeddings(self) -> np.ndarray:
        """(n_items, factors) float32 item embeddings (also the output layer)."""
        self._check_fitted()
        if self._emb_cache is None:
            self._emb_cache = self._engine.item_embeddings()
            self._emb_cache.setflags(write=False)
        return self._emb_cache

    @property
    def n_items(self) -> int:
        self._check_fitted()
        return int(self._item_ids.size)

    def to(self, device: str) -> "SASRec":
        """Moves the fitted model to another device ("cpu", "cuda" or "auto"); returns self.
        The weights travel through host memory; the optimizer state starts afresh."""
        self._check_fitted()
        backend = resolve_device(device)
        if backend != self._engine.device:
            engine = _core.Model(self._engine_config(int(self._item_ids.size)), backend)
            engine.set_params(self._engine.get_params())
            self._engine = engine
            self._emb_cache = None
        self.device = device
        return self

    # ------------------------------------------------------------------ inference
    def _encode_sessions(self, sessions: Any, name: str) -> Tuple[np.ndarray, np.ndarray]:
        flat, offsets = flatten_sequences(sessions, name)
        check_ids_compatible(flat, self._item_ids, name)
        return encode(flat, self._item_ids), offsets

    def _encode_one(self, session: Any, name: str) -> np.ndarray:
        if session is None or isinstance(session, (str, bytes)) or not hasattr(session, "__len__"):
            raise ValueError(f"{name} must be a sequence of item ids, got {session!r}")
        try:
            internal, _ = self._encode_sessions([session], name)
        except ValueError as e:  # name the position inside this one session
            raise ValueError(str(e).replace(f"{name}[0]", name)) from None
        return internal[internal > 0]

    def _check_n(self, n: Any) -> int:
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        return int(n)

    def _popular(self, n: int, excluded: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        share = self._popularity / max(int(self._popularity.sum()), 1)
        order = np.lexsort((np.arange(share.size), -share))  # most popular first, ties by id
        if excluded.size:
            order = order[~np.isin(order + 1, excluded)]
        order = order[:n]
        return order + 1, share[order].astype(np.float32)

    def recommend(
        self,
        session: Sequence[Any],
        n: int = 10,
        exclude_seen: bool = True,
        exclude: Optional[Sequence[Any]] = None,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Top-n next items for one session of original ids (oldest first).

        Items unknown to the model are ignored.  A session with no known item gets the
        most popular items, scored by their share of training interactions.  With
        ``exclude_seen`` the session's items are not recommended; ``exclude`` (e.g. a
        cart) removes more.  Returns (ids, scores), best first; fewer than n when the
        catalogue, less the exclusions, has fewer items.
        """
        self._check_fitted()
        n = self._check_n(n)
        known = self._encode_one(session, "session")
        excl = known if exclude_seen else np.zeros(0, dtype=np.int32)
        if exclude is not None:
            extra = self._encode_one(exclude, "exclude")
            excl = np.concatenate((excl, extra)) if excl.size else extra
        if known.size == 0:
            ids, scores = self._popular(n, excl)
            return self._item_ids[ids - 1], scores
        with _threads(self.num_threads):
            ids, scores = self._engine.recommend(
                known, np.array([0, known.size], dtype=np.int64), min(n, self._item_ids.size),
                excl.astype(np.int32, copy=False), np.array([0, excl.size], dtype=np.int64),
            )
        ids, scores = ids[0], scores[0]
        valid = ids > 0
        if not valid.all():
            ids, scores = ids[valid], scores[valid]
        return self._item_ids[ids - 1], scores

    def recommend_batch(
        self, sessions: Sequence[Sequence[Any]], n: int = 10, exclude_seen: bool = True
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Top-n for many sessions at once: (ids, scores), each of shape (len(sessions), n).

        Sessions with no known item get the most popular items.  Where the catalogue,
        less the exclusions, has fewer than n items, the row ends with score -inf and id -1 (integer ids) or ""
        (string ids).

        On a model on the GPU, ``sessions`` may also be a 2-D CuPy integer array (sessions x
        items, every id known): it is mapped and scored on the GPU, and (ids, scores) come
        back as CuPy arrays, with no copy through the host.
        """
        self._check_fitted()
        n = self._check_n(n)
        if _is_cupy(sessions):
            return self._recommend_batch_cupy(sessions, n, exclude_seen)
        internal, offsets = self._encode_sessions(sessions, "sessions")
        internal, offsets = drop_unknown(internal, offsets)
        B = offsets.size - 1
        lengths = np.diff(offsets)
        ids = np.zeros((B, n), dtype=np.int32)
        scores = np.full((B, n), -np.inf, dtype=np.float32)
        warm = np.flatnonzero(lengths > 0)
        if warm.size:
            if warm.size == B:
                w_items, w_off = internal, offsets
            else:
                sel = np.repeat(lengths > 0, lengths)
                w_items = internal[sel]
                w_off = np.concatenate(([0], np.cumsum(lengths[warm]))).astype(np.int64)
            ex_items = w_items if exclude_seen else np.zeros(0, dtype=np.int32)
            ex_off = w_off if exclude_seen else np.zeros(warm.size + 1, dtype=np.int64)
            k = min(n, self._item_ids.size)
            with _threads(self.num_threads):
                wi, ws = self._engine.recommend(w_items, w_off, k, ex_items, ex_off)
            ids[warm, :k], scores[warm, :k] = wi, ws
        for b in np.flatnonzero(lengths == 0):
            pi, ps = self._popular(n, np.zeros(0, dtype=np.int32))
            ids[b, : pi.size], scores[b, : ps.size] = pi, ps
        out = self._item_ids[np.maximum(ids, 1) - 1]
        if (ids == 0).any():
            fill = "" if self._item_ids.dtype.kind == "U" else -1
            out = out.copy()
            out[ids == 0] = fill
        return out, scores

    def _recommend_batch_cupy(self, sessions: Any, n: int, exclude_seen: bool) -> Tuple[Any, Any]:
        import cupy as cp

        if self._engine.device != "cuda":
            raise ValueError(
                f"sessions is a CuPy array but this model is on {self._engine.device!r}: move it "
                "with .to('cuda'), or pass a NumPy array or lists"
            )
        if sessions.device.id != self._engine.device_index:
            raise ValueError(
                f"sessions is on GPU {sessions.device.id} but this model is on GPU "
                f"{self._engine.device_index}: copy it there first (cupy.asarray inside "
                f"`with cupy.cuda.Device({self._engine.device_index}):`)"
            )
        if sessions.ndim != 2 or sessions.dtype.kind not in "iu":
            raise ValueError(
                "sessions as a CuPy array must be 2-D integer item ids (sessions x items), got "
                f"shape {sessions.shape} of {sessions.dtype}"
            )
        if self._item_ids.dtype.kind not in "iu":
            raise ValueError("this model's item ids are strings: CuPy sessions cannot name them")
        B, L = sessions.shape
        k = min(n, int(self._item_ids.size))
        ids_gpu = self._cupy_item_ids(cp)
        if L == 0 or B == 0:
            raise ValueError(f"sessions must have at least one item per session, got shape {sessions.shape}")
        x = sessions.astype(cp.int64, copy=False)
        pos = cp.minimum(cp.searchsorted(ids_gpu, x), ids_gpu.size - 1)
        found = ids_gpu[pos] == x
        if not bool(found.all()):  # one scalar crosses to the host
            bad = int(x.ravel()[int(cp.argmin(found.ravel()))])
            raise ValueError(
                f"sessions: item id {bad} is not in the model's catalogue; CuPy sessions must "
                "hold known ids only (NumPy arrays and lists skip unknown ones)"
            )
        internal = (pos + 1).astype(cp.int32)
        fwd = cp.ascontiguousarray(internal[:, -self.max_seq:])
        excl = internal if exclude_seen else None
        out_ids = cp.empty((B, k), dtype=cp.int32)
        out_scores = cp.empty((B, k), dtype=cp.float32)
        # The engine works on its own stream: what CuPy's stream wrote must be done first.
        cp.cuda.get_current_stream().synchronize()
        self._engine.recommend_resident(
            fwd.data.ptr, B, fwd.shape[1], excl.data.ptr if excl is not None else 0,
            L if excl is not None else 0, k, out_ids.data.ptr, out_scores.data.ptr,
        )  # returns once its stream is done
        ids = ids_gpu[cp.maximum(out_ids, 1) - 1]
        ids[out_ids == 0] = -1
        if k < n:
            ids = cp.concatenate([ids, cp.full((B, n - k), -1, dtype=ids.dtype)], axis=1)
            out_scores = cp.concatenate(
                [out_scores, cp.full((B, n - k), -cp.inf, dtype=cp.float32)], axis=1)
        return ids, out_scores

    def _cupy_item_ids(self, cp: Any) -> Any:
        src, cached = getattr(self, "_item_ids_gpu", (None, None))
        if src is not self._item_ids:  # refit or loaded since: a new catalogue
            cached = cp.asarray(self._item_ids)
            self._item_ids_gpu = (self._item_ids, cached)
        return cached

    def session_embeddings(self, sessions: Sequence[Sequence[Any]]) -> np.ndarray:
        """(len(sessions), factors) float32: the final hidden state at each session's last
        position.  Rows of sessions with no known item are NaN."""
        self._check_fitted()
        internal, offsets = self._encode_sessions(sessions, "sessions")
        internal, offsets = drop_unknown(internal, offsets)
        lengths = np.diff(offsets)
        out = np.full((lengths.size, self.factors), np.nan, dtype=np.float32)
        warm = np.flatnonzero(lengths > 0)
        if warm.size:
            sel = np.repeat(lengths > 0, lengths)
            w_off = np.concatenate(([0], np.cumsum(lengths[warm]))).astype(np.int64)
            with _threads(self.num_threads):
                out[warm] = self._engine.session_states(internal[sel], w_off)
        return out

    # ------------------------------------------------------------------ store helpers
    def _cosine_rows(self) -> np.ndarray:
        E = self.item_embeddings
        return E / np.clip(np.linalg.norm(E, axis=1, keepdims=True), 1e-8, None)

    def similar_items(self, item: Any, n: int = 10) -> Tuple[np.ndarray, np.ndarray]:
        """The n items whose embeddings are closest to ``item``'s by cosine similarity
        (the item itself excluded): (ids, cosines), best first."""
        self._check_fitted()
        n = self._check_n(n)
        internal = self._encode_one([item], "item")
        if internal.size == 0:
            raise ValueError(f"item {item!r} is not in the model's catalogue")
        U = self._cosine_rows()
        sims = U @ U[internal[0] - 1]
        sims[internal[0] - 1] = -np.inf
        k = min(n, sims.size - 1)
        top = np.argpartition(-sims, k - 1)[:k] if k > 0 else np.zeros(0, dtype=np.int64)
        top = top[np.lexsort((top, -sims[top]))]
        return self._item_ids[top], sims[top].astype(np.float32)

    def session_quality(self, session: Sequence[Any]) -> float:
        """How focused a session is, in [0, 1]: the mean pairwise cosine similarity of the
        embeddings of its known items (negative means clipped to 0); 0.0 with fewer than
        2 known items."""
        self._check_fitted()
        known = self._encode_one(session, "session")
        m = known.size
        if m < 2:
            return 0.0
        U = self._cosine_rows()[known - 1].astype(np.float64)
        sim = U @ U.T
        mean = (sim.sum() - np.trace(sim)) / (m * (m - 1))
        return float(np.clip(mean, 0.0, 1.0))

    def evaluate(
        self,
        sequences: Any,
        k: int = 10,
        protocol: str = "loo",
        n_negatives: int = 100,
        random_state: int = 0,
    ) -> Dict[str, Any]:
        """Holds out each sequence's last item and ranks it from the items before it.

        ``protocol="loo"`` ranks the whole catalogue (the context's items excluded);
        ``"sampled"`` ranks it among ``n_negatives`` random items the sequence does not
        contain (the SASRec paper's 100-negative protocol: much easier, so its numbers are
        not comparable with full ranking).  Returns HR@k, NDCG@k, MRR@k, coverage@k (the
        share of the catalogue that appears in some top-k list; loo only), ``n`` (sequences
        scored; shorter than 2 are skipped) and ``protocol``, a label to print with them.
        Held-out items unknown to the model count as misses."""
        from fastsasrec.metrics import ranks_from_topk, summarize

        self._check_fitted()
        k = self._check_n(k)
        if protocol not in ("loo", "sampled"):
            raise ValueError(f"protocol must be 'loo' or 'sampled', got {protocol!r}")
        flat, offsets = flatten_sequences(sequences, "sequences")
        check_ids_compatible(flat, self._item_ids, "sequences")
        lengths = np.diff(offsets)
        use = np.flatnonzero(lengths >= 2)
        if use.size == 0:
            raise ValueError("no sequence has 2 or more items: nothing to evaluate")
        contexts = [flat[offsets[i]: offsets[i + 1] - 1] for i in use]
        targets = flat[offsets[use + 1] - 1]
        if protocol == "loo":
            ids, _ = self.recommend_batch(contexts, n=k, exclude_seen=True)
            out = summarize(ranks_from_topk(ids, targets), k)
            shown = ids[(ids != -1) & (ids != "")] if ids.dtype.kind == "U" else ids[ids != -1]
            out[f"coverage@{k}"] = float(np.unique(shown).size / self._item_ids.size)
            label = "leave-one-out, full catalogue ranking"
        else:
            if isinstance(n_negatives, bool) or not isinstance(n_negatives, numbers.Integral) or n_negatives < 1:
                raise ValueError(f"n_negatives must be a positive integer, got {n_negatives!r}")
            out = self._sampled_ranks(contexts, targets, k, int(n_negatives), random_state)
            label = f"sampled: {n_negatives} negatives (SASRec paper protocol)"
        out["n"] = int(use.size)
        out["protocol"] = label
        return out

    def _sampled_ranks(self, contexts, targets, k, n_neg, seed) -> Dict[str, float]:
        from fastsasrec.metrics import summarize

        V = self._item_ids.size
        H = self.session_embeddings(contexts).astype(np.float64)
        E = self.item_embeddings.astype(np.float64)
        t_int = encode(np.asarray(targets), self._item_ids)
        rng = np.random.default_rng(seed)
        ranks = np.full(len(contexts), -1, dtype=np.int64)
        for b, ctx in enumerate(contexts):
            if t_int[b] == 0 or np.isnan(H[b, 0]):
                continue  # unknown target or context: a miss
            seen = set(encode(np.asarray(ctx), self._item_ids).tolist()) | {int(t_int[b])}
            if V - len(seen) < n_neg:
                raise ValueError(f"n_negatives ({n_neg}) exceeds the items a sequence does not contain")
            neg: List[int] = []
            while len(neg) < n_neg:
                for x in rng.integers(1, V + 1, size=2 * n_neg).tolist():
                    if x not in seen:
                        seen.add(x)
                        neg.append(x)
                        if len(neg) == n_neg:
                            break
            s_t = H[b] @ E[t_int[b] - 1]
            s_n = E[np.asarray(neg) - 1] @ H[b]
            ranks[b] = int((s_n > s_t).sum())
        return summarize(ranks, k)

    # ------------------------------------------------------------------ compatibility
    # The layer older notebooks use (``_item_map``, ``_rev_item_map``, ``_item_emb``,
    # ``recommend_items``): internal ids are 1..n_items, row i of ``_item_emb`` is
    # internal id i (row 0 is the padding row).  Thin views over the public API.
    def _maps(self) -> Tuple[Dict[Any, int], Dict[int, Any]]:
        self._check_fitted()
        if self._item_map_cache is None:
            ids = self._item_ids.tolist()
            self._item_map_cache = ({x: i + 1 for i, x in enumerate(ids)},
                                    {i + 1: x for i, x in enumerate(ids)})
        return self._item_map_cache

    @property
    def _item_map(self) -> Dict[Any, int]:
        """original id -> internal id."""
        return self._maps()[0]

    @property
    def _rev_item_map(self) -> Dict[int, Any]:
        """internal id -> original id."""
        return self._maps()[1]

    @property
    def _item_emb(self) -> np.ndarray:
        """(n_items + 1, factors): row i is internal id i's embedding, row 0 padding."""
        E = self.item_embeddings
        return np.vstack([np.zeros((1, E.shape[1]), dtype=E.dtype), E])

    def recommend_items(
        self, user_sequence: Sequence[int], n: int = 10, exclude: Optional[Sequence[int]] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """``recommend`` in internal ids: ``user_sequence`` and ``exclude`` are internal
        ids (see ``_item_map``); returns (internal ids, scores).  Only ``exclude`` is
        excluded."""
        self._check_fitted()
        V = self._item_ids.size
        seq = np.asarray(list(user_sequence), dtype=np.int64)
        if seq.size and (seq.min() < 1 or seq.max() > V):
            raise ValueError(f"user_sequence holds internal ids outside 1..{V}")
        ex = np.asarray(list(exclude) if exclude is not None else [], dtype=np.int64)
        if ex.size and (ex.min() < 1 or ex.max() > V):
            raise ValueError(f"exclude holds internal ids outside 1..{V}")
        ids, scores = self.recommend(self._item_ids[seq - 1], n=n, exclude_seen=False,
                                     exclude=self._item_ids[ex - 1])
        return encode(np.asarray(ids), self._item_ids).astype(np.int64), scores

    # ------------------------------------------------------------------ files
    def save(self, path: "os.PathLike[str] | str") -> None:
        """Writes the model (config, weights, item ids) to one file, without pickle.

        The file is a zip archive holding ``fastsasrec.json`` (format name and version,
        the parameters, the tensor layout) and ``.npy`` arrays; it is written to a
        temporary file and renamed, so a crash never leaves a half-written model."""
        self._check_fitted()
        path = os.fspath(path)
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "library_version": _library_version(),
            "params": self.get_params(),
            "n_items": int(self._item_ids.size),
            "engine_config": self._engine_config(int(self._item_ids.size)),
            "tensors": [[n, int(o), list(s)] for n, o, s in self._engine.tensors()],
            "item_id_kind": "str" if self._item_ids.dtype.kind == "U" else "int",
            "loss_history": self.loss_history_,
        }
        arrays = {
            "params": self._engine.get_params(),
            "item_ids": self._item_ids,
            "popularity": self._popularity,
        }
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".fastsasrec-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
                z.writestr("fastsasrec.json", json.dumps(meta, indent=1))
                for name, arr in arrays.items():
                    buf = io.BytesIO()
                    np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
                    z.writestr(name + ".npy", buf.getvalue())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: "os.PathLike[str] | str", device: str = "auto") -> "SASRec":
        """Reads a model written by ``save``.  Raises ValueError for a file that is not a
        fastsasrec model, is truncated or corrupted, or was written by a newer version."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"path {path!r} does not exist")
        try:
            with zipfile.ZipFile(path, "r") as z:
                names = set(z.namelist())
                if "fastsasrec.json" not in names:
                    raise ValueError(f"path {path!r} is not a fastsasrec model (no fastsasrec.json)")
                meta = json.loads(z.read("fastsasrec.json").decode("utf-8"))
                if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
                    raise ValueError(f"path {path!r} is not a fastsasrec model (format {meta.get('format')!r})"
                                     if isinstance(meta, dict) else f"path {path!r} is not a fastsasrec model")
                version = meta.get("format_version")
                if not isinstance(version, int) or version < 1:
                    raise ValueError(f"path {path!r}: invalid format_version {version!r}")
                if version > FORMAT_VERSION:
                    raise ValueError(
                        f"path {path!r} was written by a newer fastsasrec (format version {version}; "
                        f"this version reads up to {FORMAT_VERSION}): upgrade fastsasrec"
                    )
                arrays = {}
                for name in ("params", "item_ids", "popularity"):
                    if name + ".npy" not in names:
                        raise ValueError(f"path {path!r} is missing {name}.npy: the file is incomplete")
                    arrays[name] = np.lib.format.read_array(io.BytesIO(z.read(name + ".npy")), allow_pickle=False)
        except zipfile.BadZipFile as e:
            raise ValueError(f"path {path!r} is not a valid fastsasrec model file (truncated or corrupted: {e})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"path {path!r}: corrupted model header ({e})") from None
        except (EOFError, OSError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise ValueError(f"path {path!r}: could not read the model ({e})") from None
        params = dict(meta["params"])
        params["device"] = device
        params["verbose"] = 0 if "verbose" not in params else params["verbose"]
        try:
            model = cls(**params)
        except TypeError as e:
            raise ValueError(f"path {path!r}: unexpected parameters in the model file ({e})") from None
        cfg = dict(meta["engine_config"])
        n_items = int(meta["n_items"])
        item_ids, pop, flat = arrays["item_ids"], arrays["popularity"], arrays["params"]
        if item_ids.shape != (n_items,) or pop.shape != (n_items,):
            raise ValueError(f"path {path!r}: item ids do not match n_items={n_items}")
        if flat.dtype != np.float32 or flat.ndim != 1:
            raise ValueError(f"path {path!r}: weights must be a 1-d float32 array, got {flat.dtype} {flat.shape}")
        engine = _core.Model(cfg, resolve_device(device))
        if flat.size != engine.n_params:
            raise ValueError(f"path {path!r}: {flat.size} weights stored, the model needs {engine.n_params}")
        engine.set_params(flat)
        model._engine = engine
        model._item_ids = item_ids
        model._popularity = pop.astype(np.int64)
        model._seed_used = int(cfg["seed"])
        model.loss_ = str(cfg["loss"])
        model.loss_history_ = list(meta.get("loss_history", []))
        return model


def _library_version() -> str:
    from fastsasrec import __version__

    return __version__
