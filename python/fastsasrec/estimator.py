"""The SASRec estimator: the public Python API over the C++ engine.

Its parameters are in ``_params``, its file format in ``_persist``, the evaluation
protocols in ``metrics`` and the older notebook interface in ``_compat``.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fastsasrec import _core, _persist
from fastsasrec import metrics as _metrics
from fastsasrec._compat import NotebookCompat
from fastsasrec._device import resolve_device
from fastsasrec._params import DEFAULTS, PARAMS, checked, engine_config, positive_int
from fastsasrec.data import (
    Sequences,
    check_ids_compatible,
    drop_unknown,
    encode,
    flatten_sequences,
    transactions_to_sequences,
)


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


class SASRec(NotebookCompat):
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
        CPU threads of this model's engine (0: all cores).  The count belongs to the model,
        never to the process; ``set_params(num_threads=...)`` changes it on a fitted model.
    precision : {"fp32", "bf16"}
        ``fp32`` computes everything in float32 (the GPU matches the CPU to rounding).
        ``bf16`` rounds the operands of the linear layers' matrix products to bfloat16 and
        sums the products in float32 (the GPU's tensor cores); weights, activations,
        attention, losses and the optimizer stay float32.  The CPU computes the same
        rounding, for the same answers, but gains no speed from it.
    """

    def __init__(
        self,
        factors: int = DEFAULTS["factors"],
        n_layers: int = DEFAULTS["n_layers"],
        n_heads: int = DEFAULTS["n_heads"],
        max_seq: int = DEFAULTS["max_seq"],
        dropout: float = DEFAULTS["dropout"],
        loss: str = DEFAULTS["loss"],
        n_negatives: int = DEFAULTS["n_negatives"],
        learning_rate: float = DEFAULTS["learning_rate"],
        weight_decay: float = DEFAULTS["weight_decay"],
        batch_size: int = DEFAULTS["batch_size"],
        iterations: int = DEFAULTS["iterations"],
        device: str = DEFAULTS["device"],
        random_state: Optional[int] = DEFAULTS["random_state"],
        verbose: int = DEFAULTS["verbose"],
        num_threads: int = DEFAULTS["num_threads"],
        precision: str = DEFAULTS["precision"],
    ) -> None:
        given = {name: value for name, value in locals().items() if name in PARAMS}
        for name, value in checked(given).items():
            setattr(self, name, value)
        # The fitted state (see _set_fitted): the engine, its configuration, the catalogue.
        self._engine = None
        self._config: Optional[Dict[str, Any]] = None
        self._item_ids: Optional[np.ndarray] = None
        self._popularity: Optional[np.ndarray] = None
        self._emb_cache: Optional[np.ndarray] = None
        self.loss_history_: List[float] = []
        self.history_: List[Dict[str, Any]] = []
        self.best_epoch_: int = 0
        self.loss_: Optional[str] = None

    # ------------------------------------------------------------------ params
    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in PARAMS}

    def set_params(self, **params: Any) -> "SASRec":
        """Sets parameters (all checked before any is set); returns self.  On a fitted
        model, ``num_threads`` applies at once; the others take effect at the next fit."""
        for name, value in checked(self.get_params(), params).items():
            setattr(self, name, value)
        if "num_threads" in params and self._engine is not None:
            self._engine.set_threads(self.num_threads)
        return self

    def __repr__(self) -> str:
        changed = [f"{n}={getattr(self, n)!r}" for n, d in DEFAULTS.items() if getattr(self, n) != d]
        return f"SASRec({', '.join(changed)})"

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        sequences: Any,
        validation: Optional[Any] = None,
        early_stopping_patience: Optional[int] = None,
        callbacks: Optional[Sequence[Callable[..., Any]]] = None,
    ) -> "SASRec":
        """Trains on sequences of original item ids (oldest first); returns self.

        ``sequences``: a list of lists (or arrays) of item ids, a pandas Series of lists,
        or a ``Sequences`` (the flat form).  Ids are all integers or all strings.
        Sequences with fewer than 2 items cannot teach anything and are skipped with one
        warning giving their count.

        ``validation``: sequences scored after every epoch (each one's last item held out,
        full-catalogue NDCG@10, see ``evaluate``); with ``early_stopping_patience`` training
        stops after that many epochs without improvement, and the best epoch's weights
        are restored.  ``callbacks``: callables ``cb(model, epoch, logs)`` run after each
        epoch (``logs``: loss, tokens/s, validation metrics); one returning True stops
        training.  Ctrl-C (KeyboardInterrupt) stops training after the current epoch and
        leaves the model usable with the weights of the last completed epoch.
        """
        return self._fit(flatten_sequences(sequences, "sequences"), validation,
                         early_stopping_patience, callbacks)

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
        items, offsets, _ = transactions_to_sequences(df, user_col, item_col, timestamp_col)
        return model._fit(Sequences(items, offsets), **fit_kw)

    def _fit(self, sequences: Sequences, validation=None, early_stopping_patience=None, callbacks=None):
        if early_stopping_patience is not None:
            early_stopping_patience = positive_int(early_stopping_patience, "early_stopping_patience")
            if validation is None:
                raise ValueError("early_stopping_patience needs validation= data to watch")
        if callbacks is not None and not all(callable(cb) for cb in callbacks):
            raise ValueError("callbacks must be a list of callables cb(model, epoch, logs)")
        if validation is not None:
            validation = flatten_sequences(validation, "validation")
        n_seq = len(sequences)
        if n_seq == 0:
            raise ValueError("sequences is empty: nothing to train on")
        # The one place short sequences are dropped: the engine rejects them.
        lengths = sequences.lengths
        short = lengths < 2
        if short.all():
            raise ValueError(
                f"every one of the {n_seq} sequences has fewer than 2 items: nothing to train on"
            )
        flat, offsets = sequences.items, sequences.offsets
        if short.any():
            warnings.warn(
                f"skipped {int(short.sum())} of {n_seq} sequences with fewer than 2 items",
                stacklevel=3,
            )
            flat = flat[np.repeat(~short, lengths)]
            offsets = np.concatenate(([0], np.cumsum(lengths[~short]))).astype(np.int64)
        item_ids, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        internal = (inverse.reshape(-1) + 1).astype(np.int32)
        seed = self.random_state
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        config = engine_config(self.get_params(), int(item_ids.size), seed)
        engine = _core.Model(config, resolve_device(self.device), threads=self.num_threads)
        self._set_fitted(engine, config, item_ids, counts.astype(np.int64))
        self.loss_history_ = []
        self.history_ = []
        self._train(internal, offsets, self.iterations, validation, early_stopping_patience, callbacks)
        return self

    def _set_fitted(self, engine: Any, config: Dict[str, Any], item_ids: np.ndarray,
                    popularity: np.ndarray) -> None:
        """Installs a fitted state: the engine, the configuration it was built with, the
        catalogue (sorted original ids) and each item's count of training interactions."""
        self._engine = engine
        self._config = config
        self._item_ids = item_ids
        self._popularity = popularity
        self._emb_cache = None
        self.loss_ = str(config["loss"])

    def _train(self, internal, offsets, epochs, validation, patience, callbacks) -> None:
        lengths = np.diff(offsets)
        tokens = int((np.minimum(lengths, self._config["max_seq"] + 1) - 1).clip(min=0).sum())
        best_score, best_params, best_epoch, since_best = -math.inf, None, 0, 0
        bar = _progress(epochs, self.verbose)
        epoch = 0
        try:
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
            engine = _core.Model(self._config, backend, threads=self.num_threads)
            engine.set_params(self._engine.get_params())
            self._engine = engine
            self._emb_cache = None
        self.device = device
        return self

    # ------------------------------------------------------------------ inference
    def _encode_sessions(self, sessions: Any, name: str) -> Tuple[np.ndarray, np.ndarray]:
        """(internal ids, offsets) of many sessions; unknown ids are 0."""
        flat = flatten_sequences(sessions, name)
        check_ids_compatible(flat.items, self._item_ids, name)
        return encode(flat.items, self._item_ids), flat.offsets

    def _encode_one(self, session: Any, name: str) -> np.ndarray:
        if session is None or isinstance(session, (str, bytes)) or not hasattr(session, "__len__"):
            raise ValueError(f"{name} must be a sequence of item ids, got {session!r}")
        try:
            internal, _ = self._encode_sessions([session], name)
        except ValueError as e:  # name the position inside this one session
            raise ValueError(str(e).replace(f"{name}[0]", name)) from None
        return internal[internal > 0]

    def _check_n(self, n: Any) -> int:
        return positive_int(n, "n")

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
        self, sessions: Any, n: int = 10, exclude_seen: bool = True
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Top-n for many sessions at once: (ids, scores), each of shape (len(sessions), n).

        ``sessions``: lists of original ids, or a ``Sequences``.  Sessions with no known
        item get the most popular items.  Where the catalogue, less the exclusions, has
        fewer than n items, the row ends with score -inf and id -1 (integer ids) or ""
        (string ids).

        On a model on the GPU, ``sessions`` may also be a 2-D CuPy integer array (sessions x
        items, every id known): it is mapped and scored on the GPU, and (ids, scores) come
        back as CuPy arrays, with no copy through the host.
        """
        self._check_fitted()
        n = self._check_n(n)
        if _is_cupy(sessions):
            return self._recommend_batch_cupy(sessions, n, exclude_seen)
        internal, offsets = drop_unknown(*self._encode_sessions(sessions, "sessions"))
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
            wi, ws = self._engine.recommend(w_items, w_off, k, ex_items, ex_off)
            ids[warm, :k], scores[warm, :k] = wi, ws
        cold = np.flatnonzero(lengths == 0)
        if cold.size:
            pi, ps = self._popular(n, np.zeros(0, dtype=np.int32))
            ids[cold, : pi.size], scores[cold, : ps.size] = pi, ps
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
        fwd = cp.ascontiguousarray(internal[:, -self._config["max_seq"]:])
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

    def session_embeddings(self, sessions: Any) -> np.ndarray:
        """(len(sessions), factors) float32: the final hidden state at each session's last
        position.  Rows of sessions with no known item are NaN.  ``sessions``: lists of
        ids or a ``Sequences``."""
        self._check_fitted()
        internal, offsets = drop_unknown(*self._encode_sessions(sessions, "sessions"))
        lengths = np.diff(offsets)
        out = np.full((lengths.size, self._config["factors"]), np.nan, dtype=np.float32)
        warm = np.flatnonzero(lengths > 0)
        if warm.size:
            sel = np.repeat(lengths > 0, lengths)
            w_off = np.concatenate(([0], np.cumsum(lengths[warm]))).astype(np.int64)
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

        ``sequences``: lists of original ids, or a ``Sequences``.  ``protocol="loo"`` ranks the whole catalogue (the context's items excluded);
        ``"sampled"`` ranks it among ``n_negatives`` random items the sequence does not
        contain (the SASRec paper's 100-negative protocol: much easier, so its numbers are
        not comparable with full ranking).  Returns HR@k, NDCG@k, MRR@k, coverage@k (the
        share of the catalogue that appears in some top-k list; loo only), ``n`` (sequences
        scored; shorter than 2 are skipped) and ``protocol``, a label to print with them.
        Held-out items unknown to the model count as misses."""
        return _metrics.evaluate(self, sequences, k, protocol, n_negatives, random_state)

    # ------------------------------------------------------------------ files
    def save(self, path: "os.PathLike[str] | str") -> None:
        """Writes the model (config, weights, item ids) to one file, without pickle.

        The file is a zip archive holding ``fastsasrec.json`` (format name and version,
        the parameters, the tensor layout) and ``.npy`` arrays; it is written to a
        temporary file and renamed, so a crash never leaves a half-written model."""
        self._check_fitted()
        _persist.save(self, path)

    @classmethod
    def load(cls, path: "os.PathLike[str] | str", device: str = "auto") -> "SASRec":
        """Reads a model written by ``save``.  Raises ValueError for a file that is not a
        fastsasrec model, is truncated or corrupted, or was written by a newer version."""
        return _persist.load(cls, path, device)
