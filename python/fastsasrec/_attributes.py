"""SASRec's fitted attributes (``item_ids_``, ``popularity_``, ``history_``, ...), each read
from the published snapshot once: a mixin of the estimator, which gives ``_fitted()`` (the
snapshot, or NotFittedError) and ``_state`` (the snapshot, or None)."""
from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from fastsasrec import _fitted

# Publishing a snapshot assigns ``_state`` under this lock, so that a read-modify-write
# (to(), num_threads) never undoes a publish made meanwhile by another thread.  Readers
# never take it.
_PUBLISH = threading.Lock()


class FittedAttributes:
    """The fitted model's attributes.  Before fit the ones ending in ``_`` that need a
    model raise NotFittedError (a ValueError and an AttributeError), so that
    ``hasattr(model, "item_ids_")`` says whether the model is fitted; the fit's record
    (``loss_history_``, ``history_``, ...) is empty instead."""

    @property
    def item_ids_(self) -> np.ndarray:
        """Original item ids in internal order (read-only); entry i matches row i of
        ``item_embeddings_``.  Ascending after fit; partial_fit appends new items."""
        return self._fitted().item_ids

    @property
    def item_embeddings_(self) -> np.ndarray:
        """(n_items, factors) float32 item embeddings (also the output layer), read-only."""
        return self._fitted().item_embeddings()

    @property
    def popularity_(self) -> np.ndarray:
        """Each item's count of training interactions (read-only), in ``item_ids_`` order:
        what the fallback for a session with no known item ranks by."""
        return self._fitted().popularity

    @property
    def n_items_(self) -> int:
        return self._fitted().n_items

    @property
    def item_names_(self) -> Optional[np.ndarray]:
        """Display names in ``item_ids_`` order ("" for an item without one), or None: the
        ``item_names`` column of the features fit (or partial_fit) was given."""
        f = self._fitted().features
        return None if f is None else f.names

    @property
    def item_features_(self) -> Optional[List[Dict[str, Any]]]:
        """The item features the model reads, or None: per column its name, kind
        (categorical, multi, numeric), values (categorical, multi) or bucket edges
        (numeric); each column also has an "unknown" and a "missing" value."""
        f = self._fitted().features
        return None if f is None else f.space.to_json()

    def describe_item_features(self) -> str:
        """One line on how the item features were read (each column's kind and its values or
        buckets), how many items have a row, and how many of them are new products (features
        and no training event), and the display names' column; what ``fastsasrec train``
        prints."""
        state = self._fitted()
        f = state.features
        if f is None:
            raise ValueError("this model was fitted without item_features")
        new = int(np.count_nonzero(state.popularity == 0))
        named = ""
        if f.names is not None and f.names_column is not None:
            named = f"; names from column {f.names_column!r}"
        return f.summary() + f", {new:,} of them new products (no event){named}"

    def item_feature_values(self, item: Any) -> List[str]:
        """The feature values the model holds for one item, as text (``genres='Comedy'``,
        ``year in [1990, 1994)``, ``<no features>``): what its vector adds to its id."""
        state = self._fitted()
        if state.features is None:
            raise ValueError("this model was fitted without item_features")
        internal = _fitted.encode_flat(state, [item], "item")
        if internal[0] == 0:
            raise ValueError(f"item {item!r} is not in the model's catalogue")
        f = state.features
        i = int(internal[0])
        return [f.space.describe(int(v)) for v in f.values[f.offsets[i]:f.offsets[i + 1]]]

    @property
    def max_seq_(self) -> int:
        """The most recent items of a session the model reads ("auto" resolved)."""
        return int(self._fitted().config["max_seq"])

    @property
    def factors_(self) -> int:
        return int(self._fitted().config["factors"])

    @property
    def device_(self) -> str:
        """The device the fitted model runs on: "cpu" or "cuda:N"."""
        engine = self._fitted().engine
        return "cpu" if engine.device_index < 0 else f"cuda:{engine.device_index}"

    # Older names of the same attributes.
    item_ids = item_ids_
    item_embeddings = item_embeddings_
    n_items = n_items_

    @property
    def fitted_params_(self) -> Dict[str, Any]:
        """The parameters the fitted model was fitted (or loaded) with, as given ("auto"
        included: ``defaults_`` says what it chose); ``get_params`` gives those of the next
        fit, which ``set_params`` changes."""
        return dict(self._fitted().params)

    @property
    def defaults_(self) -> Dict[str, Dict[str, Any]]:
        """The settings "auto" chose for the fitted model: {name: {"value": ..., "why": ...}}
        (iterations: the epoch whose weights are kept, and "epochs_run").  Empty when every
        setting was given."""
        return dict(self._fitted().defaults or {})

    @property
    def loss_(self) -> Optional[str]:
        """The loss the fitted model was trained with ("auto" resolved); None before fit."""
        state = self._state
        return None if state is None else str(state.config["loss"])

    @property
    def loss_history_(self) -> List[float]:
        """The training loss of each epoch of the fitted model ([] before fit)."""
        state = self._state
        return [] if state is None else list(state.loss_history)

    @loss_history_.setter
    def loss_history_(self, value: Sequence[float]) -> None:
        with _PUBLISH:
            state = self._fitted()
            self._state = dataclasses.replace(state, loss_history=tuple(float(x) for x in value))

    @property
    def validation_(self) -> Optional[Dict[str, Any]]:
        """With ``validation=`` given to fit: the kept weights' validation NDCG@10, the
        most-popular items' on the same sequences, the epoch and whether the model beats
        them (fit warns when it does not); None otherwise."""
        state = self._state
        return None if state is None or state.validation is None else dict(state.validation)

    @property
    def interrupted_(self) -> bool:
        """True when the fit (or partial_fit) that made this model was stopped by Ctrl-C:
        its weights are those of ``best_epoch_``: its best validated epoch so far where it
        validated, else its last completed one (``len(loss_history_)``)."""
        state = self._state
        return False if state is None else state.interrupted

    @property
    def history_(self) -> List[Dict[str, Any]]:
        """One dict per epoch of the fit, of both phases of an "auto" fit (the slice's
        early stopping, then the refit): ``phase`` ("slice", "refit" or "train"), ``epoch``
        (the model's epoch count: a refit that continues the slice's kept epochs counts on
        from them), ``loss``, ``tokens_per_s``, ``seconds`` (the epoch and its validation),
        the validation metrics (``val_NDCG@10`` ...) where scored, ``val_NDCG@10_smoothed``
        (the running mean early stopping watches) where it smooths, and ``stopped``
        ("callback") on the epoch a callback stopped.  A model read by ``load`` has none:
        the file keeps ``loss_history_`` only."""
        state = self._state
        return [] if state is None else list(state.history)

    def plot_history(self, path: "Optional[os.PathLike[str] | str]" = None):
        """The fit's loss and validation NDCG@10 per epoch, both phases of an "auto" fit,
        the kept epoch marked: a matplotlib Figure (needs ``fastsasrec[plot]``), saved to
        ``path`` when given.  See ``fastsasrec.plot.plot_history``."""
        from fastsasrec.plot import plot_history

        return plot_history(self.history_, path, chosen=self.best_epoch_ or None)

    @property
    def best_epoch_(self) -> int:
        """The epoch whose weights the model has (the best validated one, or the last)."""
        state = self._state
        return 0 if state is None else state.best_epoch
