"""The settings ``"auto"`` chooses from the data fit is given, and why.

Only settings adapt; the architecture stays the paper's.  Each rule follows from a
property of the data rather than from a data set's name, and was chosen on the
validation targets of MovieLens 100K, Amazon Beauty and Sports and the synthetic store
(benchmarks/BENCHMARKS.md, "Quality"); an explicit value always wins.

- ``dropout``: from the training events per item (how many examples each item's
  embedding learns from): 0.5 at 64 or fewer, 0.2 at 256 or more, linear in the log
  between.  (The paper's 0.2 for MovieLens-1M, about 270 events per item, and 0.5 for
  its sparse sets fit the rule; density does not: MovieLens 100K is dense, 6%, yet with
  59 events per item it scored 0.120 NDCG@10 on validation with dropout 0.5 against
  0.108 with 0.2.)
- ``max_seq``: the 90th percentile of the sequence lengths, rounded up to a multiple of
  10, within 10..200 (200 is the paper's window for its dense MovieLens-1M).  Training
  reads each sequence's last max_seq + 1 items, so a window shorter than the histories
  throws their older events away: on MovieLens 100K (90th percentile 243) validation
  NDCG@10 rose from 0.120 at 50 to 0.126 at 100 and 0.132 at 200, at 1.7x the time.
  Batches are packed, so a long window costs only where sequences are that long (Beauty
  scored the same at 20, its value, and 50).
- ``loss``: the full softmax up to ``SOFTMAX_MAX_ITEMS`` items (the most accurate: on
  Beauty's 12,000 items, validation NDCG@10 0.0706 against 0.0672 for 1,024 mixed
  negatives, 0.0633 for 256 and 0.0557 for 256 uniform ones, at several times their
  time per epoch); above, the sampled softmax, whose cost does not grow with the
  catalogue.
- ``negatives``: the sampled softmax's ``mixed`` negatives (half from the batch's
  targets, half uniform) with the logQ correction; ``n_negatives``: 1,024 for it (95% of
  the full softmax's NDCG@10 on Beauty at 38% of its time), 256 for gbce (the paper's).
- ``learning_rate``: from the training targets a batch holds (batch_size sequences times
  the mean targets a sequence gives, at most max_seq): AdamW's 1e-3 at 1,024 or fewer,
  growing with the square root of the targets above (the square-root rule for adaptive
  optimizers' batch size), at most 4e-3.  A batch of many long sequences is a big, quiet
  gradient that takes a longer step: MovieLens 100K (about 10,000 targets a batch, 8
  batches an epoch) reached the same validation NDCG@10 at 3e-3 in 40% of the epochs of
  1e-3, while Amazon Beauty (about 1,000 a batch, 175 batches an epoch) lost 5% at 3e-3
  and keeps 1e-3.
- ``iterations``: early stopping on a validation slice (see ``carve_slice``), at most
  ``max_epochs`` epochs, patience from the batches an epoch holds (about 150 optimizer
  steps, and at least 5 epochs, or 2 to 4 where each epoch shows each item 320 times or
  more, so that 1,280 of its events fit in fewer epochs: a rich log's slice score is flat
  within its noise after a few epochs, a sparse one's creeps up for many), the score it
  watches averaged over about 40 steps' epochs
  (where an epoch is a few steps, neighbouring epochs differ by noise more than by
  learning); then the best epoch's weights train a fifth of their epochs more on
  everything (the held-out items are each sequence's most recent, which the next-item task
  leans on most), the learning rate decaying linearly to zero over those epochs.  Against
  training a fresh model on everything for the winning number of epochs (``REFIT =
  "fresh"``) that is a fraction of the time; the decay and the fifth (against a tenth at a
  constant rate) were chosen on MovieLens 100K's validation targets.  Measured by
  benchmarks/bench_time_to_quality.py (BENCHMARKS.md, "Time to quality").
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

SOFTMAX_MAX_ITEMS = 20000
MAX_SEQ_CAP = 200           # the longest window "auto" chooses
RICH, POOR = 256.0, 64.0   # events per item of dropout 0.2 and 0.5
SLICE_MIN_USERS = 100       # fewer eligible sequences: no slice, a fixed number of epochs
LR_BASE, LR_TOKENS, LR_MAX = 1e-3, 1024, 4e-3  # learning_rate: 1e-3 at 1,024 targets a batch,
#                             growing with the square root of the targets a batch holds, to 4e-3
STEPS_PATIENCE = 150        # optimizer steps without improvement before stopping
PATIENCE_MIN_EPOCHS = 5     # ... and at least this many epochs, fewer (at least 2) where
PATIENCE_MIN_VIEWS = 5 * RICH  # this many training events an item fit in fewer epochs
STEPS_SMOOTH = 40           # early stopping watches the mean score of about this many steps
STEPS_MAX = 30000           # at most this many optimizer steps (and 50..1000 epochs)
STEPS_FIXED = 1500          # without a slice: about this many steps (20..200 epochs)
REFIT = "continue"          # after the slice: "continue" (the best weights, REFIT_SHARE of
REFIT_SHARE = 0.2           # their epochs more on everything) or "fresh" (a new model)
REFIT_DECAY = True          # the continued refit's learning rate decays linearly to zero


def refit_lr_scale(epoch: int, kept: int, more: int) -> float:
    """learning_rate's multiplier in epoch ``epoch`` (kept+1..kept+more) of a continued
    refit: linear decay to zero over its epochs, each epoch at its midpoint's value."""
    return (more - (epoch - kept) + 0.5) / more


def _why(value: Any, why: str) -> Dict[str, Any]:
    return {"value": value, "why": why}


def resolve(params: Dict[str, Any], lengths: np.ndarray, n_items: int
            ) -> Tuple[Dict[str, Any], Dict[str, Dict[str, Any]]]:
    """(params with every "auto" but iterations replaced, {name: {"value", "why"}} of the
    replaced ones).  lengths: the training sequences' lengths."""
    out = dict(params)
    chosen: Dict[str, Dict[str, Any]] = {}
    n_seq = int(lengths.size)
    events = int(lengths.sum())
    if params["dropout"] == "auto":
        per_item = events / max(1, n_items)
        x = (math.log(RICH) - math.log(max(per_item, 1e-9))) / (math.log(RICH) - math.log(POOR))
        d = round((0.2 + 0.3 * min(1.0, max(0.0, x))) * 20) / 20
        out["dropout"] = d
        chosen["dropout"] = _why(d, f"{per_item:.0f} training events per item: 0.5 at <= {POOR:g}, "
                                    f"0.2 at >= {RICH:g}, log-linear between")
    if params["max_seq"] == "auto":
        p90 = float(np.percentile(lengths, 90)) if n_seq else 2.0
        m = int(min(MAX_SEQ_CAP, max(10, math.ceil(p90 / 10) * 10)))
        out["max_seq"] = m
        chosen["max_seq"] = _why(m, f"90th percentile of sequence lengths {p90:.0f}, rounded up "
                                    f"to 10, within 10..{MAX_SEQ_CAP}")
    if params["learning_rate"] == "auto":
        window = int(out["max_seq"])
        per_seq = float(np.mean(np.clip(np.minimum(lengths, window + 1) - 1, 0, None))) if n_seq else 1.0
        batch = max(1.0, min(n_seq, int(params["batch_size"])) * per_seq)
        lr = float(min(LR_MAX, LR_BASE * max(1.0, math.sqrt(batch / LR_TOKENS))))
        lr = float(f"{lr:.2g}")
        out["learning_rate"] = lr
        chosen["learning_rate"] = _why(lr, f"{batch:,.0f} training targets a batch: {LR_BASE:g} at "
                                           f"<= {LR_TOKENS:,}, growing with the square root of the "
                                           f"targets a batch holds, at most {LR_MAX:g}")
    if params["loss"] == "auto":
        loss = "softmax" if n_items <= SOFTMAX_MAX_ITEMS else "sampled_softmax"
        out["loss"] = loss
        chosen["loss"] = _why(loss, f"{n_items} items: the full softmax up to {SOFTMAX_MAX_ITEMS}, "
                                    "the sampled softmax above")
    if params["negatives"] == "auto":
        neg = "mixed" if out["loss"] == "sampled_softmax" else "uniform"
        out["negatives"] = neg
        if out["loss"] == "sampled_softmax":
            chosen["negatives"] = _why(neg, "half the batch's targets, half uniform, logQ-corrected")
    if params["n_negatives"] == "auto":
        want = 1024 if out["loss"] == "sampled_softmax" else 256
        out["n_negatives"] = max(1, min(want, n_items - 1))
        if out["loss"] in ("sampled_softmax", "gbce"):
            chosen["n_negatives"] = _why(out["n_negatives"], f"{want} for {out['loss']}, fewer than "
                                                               "the catalogue's items")
    if params["logq_correction"] is None:
        out["logq_correction"] = out["negatives"] != "uniform"
    return out, chosen


def carve_slice(lengths: np.ndarray, seed: int) -> Optional[np.ndarray]:
    """The sequences whose last item fit holds out to choose the epochs: a random sample of
    those with 3 or more items (2 or more remain to train on), as many as 2% of the
    events (so training loses little) but at least 500 (so NDCG@10 is not too noisy to
    stop on) and at most 5,000; None when fewer than SLICE_MIN_USERS are eligible."""
    eligible = np.flatnonzero(lengths >= 3)
    if eligible.size < SLICE_MIN_USERS:
        return None
    n = int(min(eligible.size, max(500, min(5000, math.ceil(0.02 * lengths.sum())))))
    rng = np.random.default_rng([seed, 0x51CE])
    return np.sort(rng.choice(eligible, size=n, replace=False))


def patience_floor(per_item: float) -> int:
    """Early stopping's fewest epochs of patience, from the training events per item (an
    epoch shows each item about that often): PATIENCE_MIN_EPOCHS where items are seen
    little (a sparse catalogue's score creeps up over many epochs), as few as 2 where
    PATIENCE_MIN_VIEWS events an item fit in fewer epochs (a rich one's is flat within
    noise after a few)."""
    if per_item <= 0:
        return PATIENCE_MIN_EPOCHS
    return max(2, min(PATIENCE_MIN_EPOCHS, math.ceil(PATIENCE_MIN_VIEWS / per_item)))


def schedule(n_seq: int, batch_size: int, per_item: float = 0.0) -> Dict[str, int]:
    """Epoch counts from the optimizer steps an epoch takes: patience and the cap of early
    stopping, the epochs whose mean score it watches (where an epoch is a few steps, the
    slice's scores of neighbouring epochs differ by noise more than by learning), and the
    fixed count used without a slice.  ``per_item``: the training events per item, which
    sets the patience's floor (``patience_floor``; 0: the floor of PATIENCE_MIN_EPOCHS)."""
    batches = max(1, math.ceil(n_seq / batch_size))
    return {
        "patience": max(patience_floor(per_item), math.ceil(STEPS_PATIENCE / batches)),
        "smooth": max(1, round(STEPS_SMOOTH / batches)),
        "max_epochs": min(1000, max(50, math.ceil(STEPS_MAX / batches))),
        "fixed": min(200, max(20, math.ceil(STEPS_FIXED / batches))),
    }
