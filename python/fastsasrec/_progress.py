"""What a fit shows while it runs: one formatter for the live line (rewritten in place
with a carriage return on a terminal), the plain per-epoch lines of a log, each phase's
closing line and the phase times of a history.

A fit has up to two phases (the ``phase`` field of ``history_``): "slice", early stopping
on a slice fit holds out itself, which chooses the epoch count; "refit", the kept
weights trained a fifth of that count more on everything (the rate decaying to zero); "train", any other training
(fixed epochs, or early stopping on validation data given by the caller).
"""
from __future__ import annotations

import os
import shutil
import sys
from typing import Any, Dict, Iterable, List, Optional, TextIO, Tuple

PHASES = {"slice": "choosing epochs on the held-out slice", "refit": "refit on everything",
          "train": "training"}


def clock(seconds: float) -> str:
    """75 -> "1:15", 3725 -> "1:02:05"."""
    s = max(0, int(round(seconds)))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def phase_times(history: Iterable[Dict[str, Any]]) -> List[Tuple[str, int, float]]:
    """(phase, epochs, seconds) of each phase of a history, in the order they ran."""
    out: Dict[str, List[float]] = {}
    for h in history:
        entry = out.setdefault(str(h.get("phase", "train")), [0, 0.0])
        entry[0] += 1
        entry[1] += float(h.get("seconds", 0.0))
    return [(p, int(n), s) for p, (n, s) in out.items()]


def _is_live(stream: TextIO) -> bool:
    """Whether ``stream`` shows a line rewritten in place: a terminal, or a notebook."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):
        return False
    return "ipykernel" in sys.modules and stream is sys.stderr


def _width(stream: TextIO) -> int:
    try:
        cols = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        cols = 0
    return (cols or shutil.get_terminal_size().columns or 80) - 1


class Watch:
    """The progress of one phase of training, on ``stream`` (stderr by default).

    ``verbose`` 0: nothing.  1: a live line on a terminal (or in a notebook), one line per
    epoch elsewhere.  2: the live line on a terminal and one line per epoch everywhere.
    A phase ends with one line (its epochs, time and best score) where the live line was."""

    def __init__(self, verbose: int, phase: str, total: int, first: int = 0,
                 patience: Optional[int] = None, stream: Optional[TextIO] = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.live = verbose >= 1 and _is_live(self.stream)
        self.lines = verbose >= 2 or (verbose == 1 and not self.live)
        self.phase, self.total, self.first, self.patience = phase, total, first, patience
        self.times: List[float] = []
        self.last: Optional[Dict[str, Any]] = None
        self.best: Optional[Tuple[float, int]] = None
        self.shown = False
        self.level = 0  # the narrowest form the live line has taken in this phase
        if self.live:
            self._draw(f"SASRec {PHASES[phase]}: epoch {first + 1} of {self._of()} under way")

    def _of(self) -> str:
        return f"at most {self.total}" if self.patience is not None else str(self.total)

    def eta(self, done: int, since_best: int) -> str:
        """The time left: exact for a fixed count of epochs (epochs left x mean epoch
        time); under early stopping, its bound and how soon it may stop."""
        left = clock((self.total - done) * sum(self.times) / max(len(self.times), 1))
        if self.patience is None:
            return f"ETA {left}"
        return (f"ETA <= {left} (cap {self.total} epochs); stops after {self.patience} "
                f"epochs without gain: {max(self.patience - since_best, 0)} left now")

    def update(self, logs: Dict[str, Any], best: Optional[Tuple[float, int]] = None,
               since_best: int = 0) -> None:
        """After an epoch: ``logs`` (its history entry), ``best`` (score, epoch) and the
        epochs since the best, under early stopping."""
        self.times.append(float(logs.get("seconds", 0.0)))
        self.last, self.best = logs, best
        if not (self.live or self.lines):
            return
        epoch = logs["epoch"]
        count = f"epoch {epoch}" if self.patience is not None else f"epoch {epoch}/{self.total}"
        loss, speed = f"loss {logs['loss']:.4f}", f"{logs['tokens_per_s']:,.0f} tok/s"
        score = short = ""
        if "val_NDCG@10" in logs:
            score = short = f"NDCG@10 {logs['val_NDCG@10']:.4f}"
            if "val_NDCG@10_smoothed" in logs:  # what early stopping watches: a running mean
                score = short = score + f", mean {logs['val_NDCG@10_smoothed']:.4f}"
            if best is not None:
                score += f" (best {best[0]:.4f} at epoch {best[1]})"
                short += f" (best {best[0]:.4f})"
        if self.lines:
            self._clear()
            print(f"SASRec {self.phase} " + "  ".join(x for x in (count, loss, speed, score) if x)
                  + f"  {logs.get('seconds', 0.0):.2f}s", file=self.stream, flush=True)
        if not self.live:
            return
        eta = self.eta(epoch, since_best)
        mid = tiny = eta
        if self.patience is not None:
            left, k = eta.split()[2], max(self.patience - since_best, 0)
            mid = f"ETA <= {left} (cap {self.total} epochs), {k} without gain to stop"
            tiny = f"ETA <= {left}, {k} to stop"
        name = PHASES[self.phase]
        watched = logs.get("val_NDCG@10_smoothed", logs.get("val_NDCG@10"))
        least = (f"NDCG@10 {watched:.4f}" if watched is not None else "") + \
            (f" best {best[0]:.4f}" if best is not None else "")
        self._draw([  # the widest that fits the terminal
            f"SASRec {name}: " + " | ".join(x for x in (count, loss, speed, score, eta) if x),
            f"{name}: " + " | ".join(x for x in (count, loss, short, eta) if x),
            f"{name}: " + " | ".join(x for x in (count, loss, short, mid) if x),
            f"{self.phase}: " + " | ".join(x for x in (count, loss, short, mid) if x),
            " ".join(x for x in (self.phase, count, f"loss {logs['loss']:.3f}",
                                 short.replace("(", "").replace(")", ""), tiny) if x),
            " ".join(x for x in (self.phase, count, f"loss {logs['loss']:.3f}", least, tiny) if x),
            " ".join(x for x in (self.phase, count, least, tiny) if x),
            " ".join(x for x in (count, tiny) if x)])

    def close(self) -> None:
        """Ends the phase: the live line gives way to the phase's summary line."""
        if not self.live:
            return
        self._clear()
        if self.last is not None:
            n = len(self.times)
            text = f"SASRec {PHASES[self.phase]}: {n} epochs in {clock(sum(self.times))}"
            if self.best is not None:
                mean = "val_NDCG@10_smoothed" in self.last  # early stopping watched a running mean
                text += (f", best {'running mean of ' if mean else ''}NDCG@10 {self.best[0]:.4f} "
                         f"at epoch {self.best[1]}")
            print(text, file=self.stream, flush=True)

    def _draw(self, forms: "str | List[str]") -> None:
        forms = [forms] if isinstance(forms, str) else forms
        width = _width(self.stream)
        # The widest form that fits, and no wider than the phase has shown: a line that
        # changed its layout from one epoch to the next (a number one digit longer) flickers.
        at = next((i for i in range(min(self.level, len(forms) - 1), len(forms)) if len(forms[i]) <= width),
                  len(forms) - 1)
        self.level = max(self.level, at) if len(forms) > 1 else self.level
        text = forms[at]
        if len(text) > width:
            text = text[:max(width - 3, 0)] + "..."
        self.stream.write("\r" + text + "\x1b[K")
        self.stream.flush()
        self.shown = True

    def _clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.shown = False
