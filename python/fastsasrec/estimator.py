"""The SASRec estimator: the public face of the C++ engine.

Its parameters are in ``_params``; the fitted snapshot and the one scoring function every
path calls in ``_fitted``; the training procedure (epochs, early stopping, the refit,
checkpoints) in ``_training``; the file format in ``_persist``; the evaluation protocols
in ``metrics``; the older notebook interface in ``_compat``.

A fitted model is one immutable ``Fitted`` snapshot, built aside by fit, partial_fit,
load and to() and published by one assignment to ``SASRec._state``.  Every public call
reads ``_state`` once and uses only that snapshot, so a call running while another
thread refits gets wholly the old model or wholly the new one, and a fit that fails
publishes nothing.  Writers (fit, partial_fit, to) are serialised per estimator: a second
one waits for the first and starts from its result.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import threading
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from fastsasrec import _core, _fitted, _persist, _pickle, _training
from fastsasrec import metrics as _metrics
from fastsasrec._attributes import _PUBLISH, FittedAttributes
from fastsasrec._compat import NotebookCompat
from fastsasrec._device import resolve_device
from fastsasrec._fitted import Fitted, Recommendations, check_catalogue, read_only
from fastsasrec._params import DEFAULTS, PARAMS, checked, flag, positive_int
from fastsasrec._event_table import transactions_to_sequences
from fastsasrec.data import Sequences, flatten_sequences


# fit's keyword arguments that from_transactions passes on.
_FIT_ARGS = ("validation", "early_stopping_patience", "callbacks", "checkpoint",
             "checkpoint_every", "resume", "item_features", "item_names")


def _is_cupy(x: Any) -> bool:
    """A CuPy array, recognised without importing CuPy."""
    return type(x).__module__.split(".")[0] == "cupy" and hasattr(x, "__cuda_array_interface__")


class SASRec(FittedAttributes, NotebookCompat):
    """SASRec (Kang & McAuley, 2018): next-item recommendation from an ordered session.

    Parameters
    ----------
    factors : int
        Width of the item embeddings and hidden states.
    n_layers, n_heads : int
        Transformer blocks and attention heads (``factors % n_heads == 0``).
    Every setting given as ``"auto"`` (the default of ``max_seq``, ``dropout``, ``loss``,
    ``negatives`` and ``iterations``) is chosen by ``fit`` from the data it is given;
    ``defaults_`` then says what was chosen and why.  A value given always wins.

    max_seq : int or "auto"
        How many of the most recent items the model reads.  ``auto``: the 90th percentile
        of the sequence lengths, rounded up to 10, within 10..200.
    dropout : float or "auto"
        Dropout rate on embeddings, attention probabilities and feed-forward layers.
        ``auto`` follows the training events per item (the examples each item embedding
        learns from): 0.5 at 64 or fewer, 0.2 at 256 or more, log-linear between.
    loss : {"auto", "softmax", "sampled_softmax", "gbce", "bce"}
        ``softmax`` is full cross-entropy over the catalogue; ``sampled_softmax`` uses
        ``n_negatives`` negatives shared across a batch (cost independent of the
        catalogue); ``gbce`` is gSASRec's calibrated binary cross-entropy (Petrov &
        Macdonald, 2023) with ``n_negatives`` uniform negatives per position; ``bce`` is
        the paper's loss (one sampled negative per position).  ``auto`` chooses from the
        catalogue size (see ``defaults_``); ``loss_`` says which was used.
    negatives : {"auto", "uniform", "popularity", "in_batch", "mixed"}
        Where ``sampled_softmax`` draws its negatives: the catalogue uniformly, the
        training targets' popularity, the batch's own targets, or half the batch's targets
        and half uniform.  A row's own target is never its negative.
    logq_correction : bool or None
        ``sampled_softmax``: subtract the log of each item's sampling probability from its
        logit (Yi et al., 2019), so that popular items drawn often are not over-penalised.
        None: on exactly when the negatives are not uniform.
    n_negatives : int or "auto"
        Negatives per batch for ``sampled_softmax``, per position for ``gbce``; must be
        smaller than the catalogue.  ``auto``: 1,024 for sampled_softmax, 256 for gbce.
    gbce_t : float
        ``gbce``'s calibration in [0, 1] (0: plain binary cross-entropy; the paper's 0.75).
    learning_rate : float or "auto"
        AdamW's learning rate (betas 0.9 / 0.98).  ``auto``: 1e-3 up to 1,024 training
        targets a batch, growing with the square root of the targets a batch holds above
        that, at most 4e-3 (long sequences make big batches: MovieLens 100K gets 3.2e-3).
    weight_decay : float
        AdamW's weight decay; it applies to matrices and embeddings.
    batch_size : int
        Sequences per training step.
    iterations : int or "auto"
        Training epochs.  Each epoch uses every sequence's most recent ``max_seq + 1``
        items, every position being a target.  ``auto``: early stopping.  Without
        ``validation``, fit holds out the last item of a sample of sequences (as many as 2%
        of the events, 500 to 5,000 sequences), scores NDCG@10 on them after each epoch,
        stops after a patience of about 150 optimizer steps (at least 5 epochs; 2 to 4
        where each epoch shows each item 320 times or more, ``_auto.patience_floor``)
        without improvement (the score averaged over about 40 steps' epochs), then trains the
        best epoch's weights a fifth of its epochs more on everything (the held-out items
        included), the learning rate decaying linearly to zero.  With fewer than 100 sequences of 3 or more items, a fixed
        count of about 1,500 steps (20..200 epochs).
    device : {"auto", "cpu", "cuda", "cuda:N"}
        ``auto`` picks the GPU when the CUDA backend is compiled in and a GPU is usable;
        ``cuda`` is the current GPU, ``cuda:N`` GPU N (a Spark or Ray task's own GPU).  A
        model on GPU N runs there from any thread.
    random_state : int or None
        Seed of initialisation, shuffling, negatives and dropout.  Results are
        deterministic for a given seed and thread count.
    verbose : int
        0: silent.  1: progress on stderr, one line rewritten in place on a terminal or
        in a notebook (the phase, epoch, loss, tokens/s, validation NDCG@10 and the best
        so far, the time left: exact for fixed epochs, a bound while early stopping),
        one line per epoch elsewhere.  2: both (the per-epoch lines for logs).
    num_threads : int
        CPU threads of this model's engine (0: all cores).  The count belongs to the model,
        never to the process; ``set_params(num_threads=...)`` changes it on a fitted model.
    precision : {"fp32", "bf16"}
        ``fp32`` computes everything in float32 (the GPU matches the CPU to rounding).
        ``bf16`` rounds the operands of the linear layers' and the softmax losses' matrix
        products to bfloat16 and sums the products in float32 (the GPU's tensor cores);
        weights, activations, attention, the other losses and the optimizer stay float32.
        The CPU computes the same rounding, for the same answers: with its own AVX-512
        BF16 kernel where the CPU has one (``show_config()`` says), 1.25-1.5x fp32's speed
        in training (the most with the full softmax loss, whose products are most of an
        epoch); elsewhere by rounding, then float32, for no gain.
    feature_pooling : {"mean", "sum"}
        With ``fit(item_features=...)``: an item's vector is its id embedding plus the
        mean (or the sum) of its feature values' embeddings, on the input side and as the
        output layer alike.
    feature_buckets : int
        With ``item_features``: how many buckets a numeric column becomes (by the quantiles
        of its values over the table's items, so each holds about as many items; fewer when
        values repeat).
    id_dropout : float in [0, 1)
        With ``item_features``: the probability that a training step leaves an item's id
        embedding out of its vector (DropoutNet's id dropout), on the input side and the
        output layer alike, the item then its features alone, as a new product is.  So the
        features learn to carry an item, and the id rows stop repeating what the features
        say.  Nothing is dropped at inference (no rescaling: the id rows are the items' own
        part, the features the shared part).  Without features it changes nothing.  The
        default, 0, was chosen on validation targets, six seeds paired: on MovieLens 100K
        (genres, year) NDCG@10 0.1254 against 0.1240 at 0.1 (higher on all six seeds), on
        the synthetic store (category, brand) 0.3026 against 0.2990.  0.1 ranks new
        products among themselves better (BENCHMARKS.md, cold start): a catalogue where
        they matter most may want it.

    Thread safety: one fitted model can serve many threads at once.  The fitted model is
    one snapshot that ``fit``, ``load`` and ``to`` replace whole, so every call gets
    wholly the model that was current when it started, even while another thread refits.
    """


    def __init__(
        self,
        factors: int = DEFAULTS["factors"],
        n_layers: int = DEFAULTS["n_layers"],
        n_heads: int = DEFAULTS["n_heads"],
        max_seq: "int | str" = DEFAULTS["max_seq"],
        dropout: "float | str" = DEFAULTS["dropout"],
        loss: str = DEFAULTS["loss"],
        negatives: str = DEFAULTS["negatives"],
        logq_correction: Optional[bool] = DEFAULTS["logq_correction"],
        n_negatives: int = DEFAULTS["n_negatives"],
        gbce_t: float = DEFAULTS["gbce_t"],
        learning_rate: "float | str" = DEFAULTS["learning_rate"],
        weight_decay: float = DEFAULTS["weight_decay"],
        batch_size: int = DEFAULTS["batch_size"],
        iterations: "int | str" = DEFAULTS["iterations"],
        device: str = DEFAULTS["device"],
        random_state: Optional[int] = DEFAULTS["random_state"],
        verbose: int = DEFAULTS["verbose"],
        num_threads: int = DEFAULTS["num_threads"],
        precision: str = DEFAULTS["precision"],
        feature_pooling: str = DEFAULTS["feature_pooling"],
        feature_buckets: int = DEFAULTS["feature_buckets"],
        id_dropout: float = DEFAULTS["id_dropout"],
    ) -> None:
        given = {name: value for name, value in locals().items() if name in PARAMS}
        for name, value in checked(given).items():
            setattr(self, name, value)
        self._state: Optional[Fitted] = None  # the published fitted model (see Fitted)
        self._writer = threading.RLock()  # fit, partial_fit and to() one at a time

    # ------------------------------------------------------------------ params
    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        """The parameters of the next fit (a fitted model's own are ``fitted_params_``)."""
        return {name: getattr(self, name) for name in PARAMS}

    def set_params(self, **params: Any) -> "SASRec":
        """Sets parameters (all checked before any is set); returns self.  They apply to the
        next fit: a fitted model keeps the configuration it was fitted with (its width,
        heads, max_seq, loss...) until then, in everything it does and in the file ``save``
        writes.  ``num_threads`` is the exception: a runtime setting, it also applies at
        once to the fitted model, and to any model a fit or partial_fit running meanwhile
        publishes (a runtime setting is never reverted)."""
        for name, value in checked(self.get_params(), params).items():
            setattr(self, name, value)
        if "num_threads" in params:
            with _PUBLISH:
                state = self._state
                if state is not None:
                    self._state = self._with_threads(state)
        return self

    def __repr__(self) -> str:
        changed = [f"{n}={getattr(self, n)!r}" for n, d in DEFAULTS.items() if getattr(self, n) != d]
        return f"SASRec({', '.join(changed)})"

    def __copy__(self) -> "SASRec":  # shallow, sharing the fitted model (what _view needs)
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        return view

    def __getstate__(self) -> Dict[str, Any]:  # pickle, joblib, deepcopy: see _pickle
        return _pickle.state_of(self)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        _pickle.restore(self, state)

    # ------------------------------------------------------------------ fitting

    def fit(
        self,
        sequences: Any,
        validation: Optional[Any] = None,
        early_stopping_patience: Optional[int] = None,
        callbacks: Optional[Sequence[Callable[..., Any]]] = None,
        checkpoint: "Optional[os.PathLike[str] | str]" = None,
        checkpoint_every: int = 1,
        resume: "Optional[os.PathLike[str] | str]" = None,
        item_features: Any = None,
        item_names: Optional[str] = None,
    ) -> "SASRec":
        """Trains on sequences of original item ids (oldest first); returns self.

        ``sequences``: a list of lists (or arrays) of item ids, a pandas Series of lists,
        or a ``Sequences`` (the flat form).  Ids are all integers or all strings; -1 and ""
        are reserved (they mark ``recommend_batch``'s empty slots).  Sequences with fewer
        than 2 items cannot teach anything and are skipped with one warning giving their
        count.

        The new model is built aside: until fit returns, this estimator keeps serving the
        model it had (from any thread), and a fit that fails (an error, a non-finite loss
        or weights) raises and leaves it exactly as it was (unfitted if it was).  Writers are
        serialised: a fit, partial_fit or to() started meanwhile on this estimator waits
        for this one to end.

        Ctrl-C (KeyboardInterrupt) is looked for between batches.  It abandons the epoch
        under way, and fit returns the model with the weights of its last completed epoch
        (where it validates: its best validated epoch so far; ``best_epoch_``):
        ``interrupted_`` is True, ``loss_history_`` has one entry per completed epoch, and a
        warning says so.  An epoch's validation, record and checkpoint are kept whole
        (Ctrl-C there waits for them; a second one does not).  Ctrl-C in the refit of an
        "auto" fit before its first epoch ends returns the slice's best model, interrupted;
        before the fit's first epoch ends it raises KeyboardInterrupt and changes nothing.  (Only the main thread receives Ctrl-C; a fit in another thread
        runs its epochs to their end.)

        ``validation``: sequences scored after every epoch (each one's last item held out,
        full-catalogue NDCG@10, see ``evaluate``); with ``early_stopping_patience`` training
        stops after that many epochs without improvement, and the best epoch's weights
        are restored.  The kept weights are then compared with recommending the most
        popular items on the same sequences: fit warns when the model loses, and
        ``validation_`` holds both scores.  ``callbacks``: callables ``cb(model, epoch, logs)`` run after each
        epoch (``logs``: the epoch's ``history_`` entry); one returning True stops
        training.  Their ``model`` is a view of this estimator holding the model being
        trained, as of that epoch (recommend, evaluate or save it there).

        ``checkpoint``: a file written (atomically) every ``checkpoint_every`` epochs, after
        the last epoch and when training stops early or is interrupted: the weights,
        AdamW's moments and step, the epochs done, the early-stopping state and a
        fingerprint of the data.  ``resume``: a checkpoint to continue from, up to
        ``iterations`` epochs in all: the same data and parameters (``iterations``,
        ``verbose``, ``num_threads`` and ``device`` may differ) give the same weights as an
        uninterrupted fit with the same seed and threads.  Data whose fingerprint differs
        from the checkpoint's, or other parameters, are refused with a ValueError.  Give
        ``validation`` again to continue early stopping, and ``item_features`` again.

        ``item_features``: what is known of each item, a table with one row per item (a
        pandas or polars DataFrame, a pyarrow Table) indexed by item id, every column a
        feature; or a ``fastsasrec.ItemFeatures`` naming the id column, the kinds and the
        list columns.  A column of numbers becomes ``feature_buckets`` buckets, and so
        does a datetime column (by time; dates as text: ``ItemFeatures(time=)``); a column
        of lists (genres, tags) gives an item several values; any other column is
        categorical.  An item's vector is its id embedding plus the pooled embeddings of
        its values (``feature_pooling``), learnt with the rest.  Items of the table that
        no sequence holds (new products) join the catalogue and are recommended from their
        features: their id embedding is zero.  An item without a row holds a "no features"
        value; a duplicated id is refused.  ``item_names``: a column of the table holding
        display names (never a feature), returned beside ids as ``names``.
        """
        sequences = flatten_sequences(sequences, "sequences")
        with self._writer:
            return self._publish(_training.fit(self, sequences, validation, early_stopping_patience,
                                               callbacks, checkpoint, checkpoint_every, resume,
                                               item_features=item_features, item_names=item_names))


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
        sorted stably by user, then by ``timestamp_col`` (numbers or datetimes, or either as
        text, read as ``fastsasrec train`` reads a CSV's; None keeps the table's order).  ``params``: the constructor's parameters, plus ``fit``'s
        ``validation``, ``early_stopping_patience``, ``callbacks``, ``checkpoint``,
        ``checkpoint_every``, ``resume``, ``item_features`` and ``item_names``.  Returns the
        fitted model."""
        fit_kw = {k: params.pop(k) for k in _FIT_ARGS if k in params}
        model = cls(**params)
        items, offsets, _ = transactions_to_sequences(df, user_col, item_col, timestamp_col)
        return model.fit(Sequences._of(items, offsets), **fit_kw)

    def partial_fit(self, sequences: Any, epochs: int = 1,
                    callbacks: Optional[Sequence[Callable[..., Any]]] = None,
                    item_features: Any = None, item_names: Optional[str] = None) -> "SASRec":
        """Continues training the fitted model on ``sequences`` (e.g. today's events) for
        ``epochs`` epochs, from its current weights and optimizer state; returns self.

        Items never seen before get new rows, initialised as fit initialises the item
        embeddings, and join the catalogue after the old items (``item_ids`` then is no
        longer sorted); each item's popularity grows by its count in ``sequences``.  The
        epochs extend ``loss_history_`` and ``history_``.  Like fit, the new model is built
        aside (the current one serves until it is published), Ctrl-C keeps the last
        completed epoch, and a failure leaves the model as it was.  A model read by
        ``load`` has no optimizer state (a model file keeps only the weights): AdamW starts
        afresh.  On an unfitted estimator it is ``fit`` with ``iterations=epochs``.

        ``item_features`` (a model fitted with them): rows for new products, which join
        the catalogue with their features (and a zero id embedding) even before any event
        holds them, or new rows for known items; encoded with the vocabularies of fit (a
        value fit never saw is unknown, and adds nothing).  With no sequences (``[]``) the
        table's products join the catalogue and nothing trains: a product listed today is
        recommendable at once.  Its columns are
        those of fit, read by name in any order: a table that lacks one of them, or has
        one fit did not, is refused (ValueError naming them).  ``item_names``: the column
        of display names; left out, the column fit's ``item_names`` named is read as names
        again where the table has it.

        Writers are serialised: a second partial_fit (or fit, or to()) called meanwhile
        waits, then trains on this one's result; nothing either adds is lost."""
        with self._writer:
            return self._publish(_training.partial_fit(self, sequences, epochs, callbacks,
                                                       item_features, item_names))

    # ------------------------------------------------------------------ state
    def _publish(self, state: Fitted) -> "SASRec":
        """Makes ``state`` the fitted model, with this estimator's runtime thread count
        (one set by set_params while the model was being built is never reverted)."""
        with _PUBLISH:
            self._state = self._with_threads(state)
        return self

    def _with_threads(self, state: Fitted) -> Fitted:
        threads = self.num_threads
        if state.params.get("num_threads") == threads:
            return state
        state.engine.set_threads(threads)
        return dataclasses.replace(state, params=dict(state.params, num_threads=threads))

    def _set_fitted(self, engine: Any, config: Dict[str, Any], item_ids: np.ndarray,
                    popularity: np.ndarray, loss_history: Sequence[float] = (),
                    defaults: Optional[Dict[str, Dict[str, Any]]] = None, features: Any = None) -> None:
        """Publishes a loaded model, once: the engine, the configuration it was built with,
        the catalogue (original ids in internal order), each item's count of training
        interactions, the loss of each epoch and what "auto" chose; its parameters are
        this estimator's (``load`` builds the estimator from the file's)."""
        check_catalogue(item_ids)
        self._publish(Fitted(engine, dict(config), self.get_params(), read_only(np.asarray(item_ids)),
                             read_only(np.asarray(popularity)),
                             loss_history=tuple(float(x) for x in loss_history),
                             defaults=None if defaults is None else dict(defaults),
                             features=features))

    def _fitted(self) -> Fitted:
        """The published model: each public call reads it once, here, and uses only it."""
        state = self._state
        if state is None:
            raise _fitted.not_fitted()
        return state

    def _view(self, state: Fitted) -> "SASRec":
        """A shallow copy of this estimator holding ``state`` and the parameters it was
        fitted with: what fit's callbacks and validation see (the model being trained, not
        yet published), and what evaluate and save read throughout, whatever another
        thread publishes meanwhile."""
        view = copy.copy(self)
        view.__dict__.update(state.params)
        view._state = state
        return view

    # The fitted model's parts one at a time (older names, None before fit); code that
    # reads two reads ``_state`` once instead (they may belong to different fits otherwise).
    @property
    def _engine(self) -> Any:
        state = self._state
        return None if state is None else state.engine

    @property
    def _config(self) -> Optional[Dict[str, Any]]:
        state = self._state
        return None if state is None else dict(state.config)

    @property
    def _item_ids(self) -> Optional[np.ndarray]:
        state = self._state
        return None if state is None else state.item_ids

    @property
    def _popularity(self) -> Optional[np.ndarray]:
        state = self._state
        return None if state is None else state.popularity

    def to(self, device: str) -> "SASRec":
        """Moves the fitted model to another device ("cpu", "cuda", "cuda:N" or "auto");
        returns self.  ("cuda" leaves a model already on a GPU where it is.)
        The weights travel through host memory; the optimizer state starts afresh.  The next
        fit uses the device too.  A writer: it waits for a fit or partial_fit under way."""
        resolve_device(device)  # an unknown or unusable device is the caller's mistake
        with self._writer:
            state = self._fitted()
            backend = resolve_device(device, state.config)
            moved = dataclasses.replace(state, params=dict(state.params, device=device))
            if backend != state.engine.device and not (backend == "cuda" and state.engine.device_index >= 0):
                engine = _core.Model(dict(state.config), backend, threads=state.params["num_threads"])
                engine.set_params(state.engine.get_params())
                moved = dataclasses.replace(moved, engine=engine)
            self.device = device
            return self._publish(moved)

    # ------------------------------------------------------------------ inference
    def recommend(
        self,
        session: Sequence[Any],
        n: int = 10,
        exclude_seen: bool = True,
        exclude: Optional[Sequence[Any]] = None,
        denylist: Optional[Sequence[Any]] = None,
        candidates: Optional[Sequence[Any]] = None,
    ) -> Recommendations:
        """Top-n next items for one session of original ids (oldest first).

        Items unknown to the model are ignored; the model reads the last ``max_seq_`` known
        items.  A new product (in the catalogue by its features, with no training event) is
        left out of the model's input beside items with events, where it misleads the model
        more than it tells (BENCHMARKS.md), though it is still seen; in a session of new
        products alone, each is read as its look-alike, the item with events sharing the
        most of its feature values (``fastsasrec recommend`` says which).  With ``exclude_seen`` every item of the session given is left out (pass a
        user's whole history to keep all of it out); ``exclude`` (e.g. a cart) and
        ``denylist`` (e.g. out of stock) remove more.  ``candidates`` ranks only these (e.g.
        the new products, a category page): each keeps the score it has in the whole
        catalogue's ranking, and ties break as there, so the answer is that ranking less
        every other item (ids the model does not know are ignored; pass the same object
        again while it is unchanged: its encoding is kept).  Returns (ids, scores), best
        first; fewer than n when the catalogue (or ``candidates``), less the exclusions, has
        fewer.  The result also has ``fallback``: True when the session had no known item,
        so that the answer is the most popular items (of ``candidates``), scored by their share
        of training interactions.
        """
        return _fitted.recommend_one(self._fitted(), session, n, exclude_seen, exclude, denylist,
                                     candidates)

    def recommend_batch(
        self, sessions: Any, n: int = 10, exclude_seen: bool = True, exclude: Any = None,
        denylist: Optional[Sequence[Any]] = None, candidates: Optional[Sequence[Any]] = None,
    ) -> Recommendations:
        """Top-n for many sessions at once: (ids, scores), each of shape
        (len(sessions), min(n, n_items)), best first, and ``fallback``: a bool per session,
        True where it had no known item and got the most popular items.

        ``sessions``: lists of original ids, or a ``Sequences``.  A slot is empty when the
        catalogue, less the row's exclusions, has too few items: an empty slot's id is -1
        (integer ids) or "" (string ids), which no item can have (fit rejects them), and
        its score is -inf (a real item's score can also be -inf, when it overflows float32:
        the id is the marker).  Empty slots come last in their row.

        ``exclude_seen``: every item of each session is left out of its row (the whole
        history given; the model reads its last ``max_seq_``, new products as ``recommend``
        reads them).  ``exclude``: per session,
        ids never to recommend to it (a cart, items already bought), as lists (one per
        session) or a ``Sequences``.  ``denylist``: ids left out of every row (pass the same
        object again while it is unchanged: its encoding is kept).  ``candidates``: only
        these are ranked, each with its whole-catalogue score (see ``recommend``); the shape
        is then (len(sessions), min(n, known candidates)).  Ids the model does not know are
        ignored; all of it is done in the same engine call.

        On a model on the GPU, ``sessions`` may also be a 2-D CuPy integer array (sessions x
        items, every id known): it is mapped and scored on the GPU, and (ids, scores) come
        back as CuPy arrays, with no copy through the host.
        """
        state = self._fitted()
        if _is_cupy(sessions):
            if exclude is not None or denylist is not None or candidates is not None:
                raise ValueError("exclude, denylist and candidates are not supported with CuPy "
                                 "sessions; pass the sessions as lists or a Sequences")
            n = min(positive_int(n, "n"), state.n_items)
            return _fitted.recommend_cupy(state, sessions, n, flag(exclude_seen, "exclude_seen"))
        return _fitted.recommend(state, sessions, n, exclude_seen, exclude, denylist,
                                 candidates=candidates)

    def session_embeddings(self, sessions: Any) -> np.ndarray:
        """(len(sessions), factors) float32: the final hidden state at each session's last
        position (``factors`` as fitted), read as ``recommend`` reads a session (new
        products left out, or read as their look-alikes).  Rows of sessions with no known
        item are NaN.
        ``sessions``: lists of ids or a ``Sequences``."""
        return _fitted.session_states(self._fitted(), sessions)

    # ------------------------------------------------------------------ store helpers
    def similar_items(self, item: Any, n: int = 10,
                      denylist: Optional[Sequence[Any]] = None) -> Recommendations:
        """The n items whose embeddings are closest to ``item``'s by cosine similarity
        (the item itself and ``denylist`` left out): (ids, cosines), best first."""
        return _fitted.similar(self._fitted(), item, n, denylist)

    def session_quality(self, session: Sequence[Any]) -> float:
        """How focused a session is, in [0, 1]: the mean pairwise cosine similarity of the
        embeddings of its known items (negative means clipped to 0); 0.0 with fewer than
        2 known items."""
        return _fitted.session_quality(self._fitted(), session)

    def evaluate(
        self,
        sequences: Any,
        k: Any = 10,
        protocol: str = "loo",
        n_negatives: int = 100,
        random_state: int = 0,
        targets: Any = None,
    ) -> Dict[str, Any]:
        """Ranks held-out items from the items before them; one flat dict of metrics.

        ``sequences``: lists of ids or a ``Sequences``; each one's last item is held out
        (shorter than 2 skipped), or with ``targets`` (one list per sequence, such as
        ``split_by_time``'s) the whole sequence is the context and every listed item a
        target (Recall@k added).  ``protocol="loo"`` ranks the whole catalogue, the
        context's items excluded; ``"sampled"`` ranks among ``n_negatives`` random items
        (the SASRec paper's: much easier, not comparable).  ``k``: an int or a list
        (``[5, 10, 20]``: one scoring pass, every metric at every k).  Keys, by k: HR,
        (Recall), NDCG, MRR, MAP, and for full ranking coverage and pop_percentile (100:
        always the most popular item), e.g. ``"NDCG@10"``; then ``n``, ``unknown_targets``
        (misses) and ``protocol``.  ``fastsasrec.metrics`` defines each metric.
        ``split_by_time``'s test side may be given whole: ``model.evaluate(test)``."""
        return _metrics.evaluate(self._view(self._fitted()), sequences, k, protocol,
                                 n_negatives, random_state, targets)

    # ------------------------------------------------------------------ files
    def save(self, path: "os.PathLike[str] | str") -> None:
        """Writes the fitted model (config, weights, item ids, and the parameters it was
        fitted with) to one file, without pickle.

        The file is a zip archive holding ``fastsasrec.json`` (format name and version,
        the parameters, the tensor layout) and ``.npy`` arrays; it is written to a
        temporary file and renamed, so a crash never leaves a half-written model."""
        _persist.save(self._view(self._fitted()), path)

    @classmethod
    def load(cls, path: "os.PathLike[str] | str", device: str = "auto",
             num_threads: Optional[int] = None) -> "SASRec":
        """Reads a model written by ``save``.  Raises ValueError for a file that is not a
        fastsasrec model, is truncated or corrupted, or was written by a newer version.
        ``num_threads``: the CPU threads of the loaded model (None: 0, all cores); a thread
        count is never taken from the file, which may come from another machine."""
        return _persist.load(cls, path, device, num_threads=num_threads)
