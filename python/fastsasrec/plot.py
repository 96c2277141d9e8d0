"""A fit's history as a file and as a picture: ``write_history`` (CSV, one row per epoch),
``read_history`` and ``plot_history`` (loss and validation NDCG@10 per epoch, the phases
told apart, the chosen epoch marked).  matplotlib (``pip install "fastsasrec[plot]"``) is
imported only when a picture is drawn, with its Agg backend (no window, no display)."""
from __future__ import annotations

import csv
import io
import os
from fastsasrec import _archive
from typing import Any, Dict, List, Optional, Sequence

FIRST_COLUMNS = ("phase", "epoch", "loss", "tokens_per_s", "seconds")
_LABELS = {"slice": "choosing epochs (held-out slice)", "refit": "refit on everything",
           "train": "training"}
_COLOURS = {"slice": "tab:blue", "refit": "tab:orange", "train": "tab:blue"}


def write_history(history: Sequence[Dict[str, Any]], path: "os.PathLike[str] | str") -> None:
    """Writes ``history`` (``model.history_``) to ``path`` as CSV: one row per epoch, the
    columns phase, epoch, loss, tokens_per_s, seconds, then the validation metrics where
    present (an empty cell where an epoch has none).  Through a temporary file in the same
    folder renamed over ``path``: a crash never leaves half a file."""
    path = os.fspath(path)
    columns = [c for c in FIRST_COLUMNS if any(c in h for h in history)]
    for h in history:
        columns += [k for k in h if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    _archive.write_bytes(path, buf.getvalue().encode("utf-8"))


def read_history(path: "os.PathLike[str] | str") -> List[Dict[str, Any]]:
    """The history written by ``write_history`` (or ``fastsasrec train --history``): a
    list of dicts, numbers as numbers, empty cells left out.  ValueError when the file
    lacks the epoch and loss columns or a value is not a number."""
    path = os.fspath(path)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"epoch", "loss"} <= set(rows[0]):
        raise ValueError(f"history file {path!r} has no rows with epoch and loss columns: "
                         "give a CSV written by fastsasrec train --history")
    out = []
    for line, row in enumerate(rows, 2):
        entry: Dict[str, Any] = {"phase": row.get("phase") or "train"}
        for k, v in row.items():
            if k == "phase" or k is None or v in ("", None):
                continue
            try:
                entry[k] = int(v) if k == "epoch" else float(v)
            except ValueError:
                raise ValueError(f"history file {path!r}, line {line}: {k} {v!r} is not a "
                                 "number") from None
        out.append(entry)
    return out


def chosen_epoch(history: Sequence[Dict[str, Any]]) -> Optional[int]:
    """The epoch count a fit kept: the refit's, else the best validated epoch of the last
    phase (the first of equal scores, as early stopping keeps), else its last epoch."""
    if not history:
        return None
    phase = history[-1].get("phase", "train")
    last = [h for h in history if h.get("phase", "train") == phase]
    scored = [h for h in last if "val_NDCG@10" in h]
    if phase == "refit" or not scored:
        return int(last[-1]["epoch"])
    return int(_best(scored)["epoch"])


def _watched(h: Dict[str, Any]) -> float:
    """The score early stopping watched at an epoch: the running mean where it kept one."""
    return h.get("val_NDCG@10_smoothed", h["val_NDCG@10"])


def _best(scored: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The epoch early stopping kept: the best watched score, the first of equals."""
    return max(scored, key=lambda h: (_watched(h), -h["epoch"]))


def _figure_classes():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"plotting needs matplotlib, which is not installed ({e}): "
                          "pip install \"fastsasrec[plot]\" (or pip install matplotlib)") from None
    return Figure, FigureCanvasAgg


def plot_history(history: Sequence[Dict[str, Any]], path: "Optional[os.PathLike[str] | str]" = None,
                 chosen: Optional[int] = None, title: Optional[str] = None):
    """Draws the training loss (top) and the validation NDCG@10 (bottom, when the history
    has it) per epoch, one curve per phase, and a vertical line at the ``chosen`` epoch
    (default: ``chosen_epoch(history)``).  Returns the matplotlib Figure; saves it to
    ``path`` when given (the format from its extension: .png, .svg, .pdf)."""
    if not history:
        raise ValueError("history is empty: nothing to plot (fit the model first; a loaded "
                         "model keeps no per-epoch history)")
    Figure, FigureCanvasAgg = _figure_classes()
    chosen = chosen_epoch(history) if chosen is None else int(chosen)
    phases: Dict[str, List[Dict[str, Any]]] = {}
    for h in history:
        phases.setdefault(h.get("phase", "train"), []).append(h)
    scored = any("val_NDCG@10" in h for h in history)
    fig = Figure(figsize=(8, 6.5 if scored else 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 if scored else 1, 1, sharex=True, squeeze=False)[:, 0]
    for phase, rows in phases.items():
        label = f"{_LABELS.get(phase, phase)}: {len(rows)} epochs"
        if all("seconds" in h for h in rows):
            label += f", {sum(h['seconds'] for h in rows):.1f} s"
        style = dict(color=_COLOURS.get(phase, "tab:green"), linewidth=1.6)
        axes[0].plot([h["epoch"] for h in rows], [h["loss"] for h in rows], label=label, **style)
        val = [h for h in rows if "val_NDCG@10" in h]
        if scored and val:
            axes[1].plot([h["epoch"] for h in val], [h["val_NDCG@10"] for h in val],
                         label=_LABELS.get(phase, phase), **style)
            smoothed = [h for h in val if "val_NDCG@10_smoothed" in h]
            if smoothed:  # the running mean early stopping watched
                axes[1].plot([h["epoch"] for h in smoothed], [h["val_NDCG@10_smoothed"] for h in smoothed],
                             color=style["color"], linewidth=2.4, alpha=0.45,
                             label=f"{_LABELS.get(phase, phase)}, running mean")
            best = _best(val)
            what = "best mean" if smoothed else "best"
            axes[1].plot([best["epoch"]], [_watched(best)], "o", color=style["color"],
                         markersize=6, label=f"{what} {_watched(best):.4f} (epoch {best['epoch']})")
            after = val[-1]["epoch"] - best["epoch"]
            if phase == "slice" and after > 0:  # the epochs without gain that stopped it
                axes[1].axvspan(best["epoch"], val[-1]["epoch"], color="0.85", alpha=0.6,
                                label=f"{after} epochs without gain")
    axes[0].set_ylabel("training loss")
    default = "SASRec: loss and validation NDCG@10 per epoch" if scored else "SASRec: loss per epoch"
    axes[0].set_title(title or default)
    if scored:
        axes[1].set_ylabel("validation NDCG@10")
    axes[-1].set_xlabel("epoch")
    mark = f"chosen: {chosen} epochs" if "refit" in phases else f"kept: epoch {chosen}"
    for i, ax in enumerate(axes):
        if chosen is not None:
            ax.axvline(chosen, color="0.3", linestyle="--", linewidth=1.2,
                       label=mark if i == 0 else None)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small", framealpha=0.9)
    if path is not None:
        fig.savefig(os.fspath(path), dpi=120)
    return fig


# ----------------------------------------------------------------------------- the command
def _command(args: Any) -> int:
    from fastsasrec._events import check_output, same_file

    if not os.path.isfile(args.history):
        raise ValueError(f"HISTORY file {args.history!r} " + (
            "is a folder" if os.path.isdir(args.history) else "does not exist"))
    if not args.output.lower().endswith((".png", ".svg", ".pdf")):
        raise ValueError(f"-o/--output must end in .png, .svg or .pdf, got {args.output!r}")
    if same_file(args.output, args.history):
        raise ValueError(f"-o/--output {args.output!r} is the HISTORY file: give another path")
    check_output(args.output, "-o/--output")
    try:
        history = read_history(args.history)
    except UnicodeDecodeError:
        raise ValueError(f"HISTORY file {args.history!r} is not text: give the CSV that "
                         "fastsasrec train --history wrote") from None
    _figure_classes()  # a missing matplotlib is said before anything else
    plot_history(history, args.output, title=args.title)
    print(f"drew {len(history)} epochs of {args.history} to {args.output}")
    return 0


def add_parser(sub: Any) -> None:
    """The ``fastsasrec plot`` subcommand."""
    p = sub.add_parser("plot", help="draw a training history: loss and validation NDCG@10 per epoch",
                       description="Draw the history written by fastsasrec train --history: the "
                                   "loss and the validation NDCG@10 per epoch, the held-out "
                                   "slice's early stopping and the refit told apart, the chosen "
                                   "epoch marked.  Needs matplotlib: pip install \"fastsasrec[plot]\".")
    p.add_argument("history", metavar="HISTORY.csv")
    p.add_argument("-o", "--output", required=True, metavar="PICTURE",
                   help="where to save: .png, .svg or .pdf")
    p.add_argument("--title", help="the picture's title")
    p.set_defaults(func=_command)
