"""Shared pieces of the benchmarks: MovieLens 100K loading under the leave-last-out
protocol, full-catalogue HR@K / NDCG@K, the most-popular baseline, token counting,
a markdown table printer and a machine description.

Protocol (used by every benchmark):
  * each user's events are sorted by time with a stable sort (ties keep file order);
  * the last item of each user is the test target, the rest is the context, which
    is also that user's training sequence;
  * items get internal ids 1..V (0 is padding), in ascending order of original id;
  * for each user the full catalogue is ranked for the held-out item, with the
    user's context items excluded; metrics are averaged over all users.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

# The benchmark model on ML-100K, the same for fastsasrec and the PyTorch reference.
CONFIG = dict(
    factors=64,
    n_layers=2,
    n_heads=1,
    max_seq=50,
    batch_size=128,
    dropout=0.2,
    learning_rate=1e-3,
    weight_decay=0.0,
    n_negatives=256,
    random_state=42,
)


def fastsasrec_topk(model, ds: "Dataset", k: int = 10):
    """A top-k function over the benchmark's internal ids for a fitted fastsasrec model
    (its recommend_batch speaks original ids); unknown ids come back as 0."""
    lookup = np.zeros(int(ds.item_ids.max()) + 2, dtype=np.int64)
    lookup[ds.item_ids[1:]] = np.arange(1, ds.n_items + 1)

    def topk(ctx):
        ids, _ = model.recommend_batch(ds.to_original(ctx), n=k, exclude_seen=True)
        ids = np.asarray(ids, dtype=np.int64)
        if ids.shape != (len(ctx), k):
            raise RuntimeError(f"recommend_batch returned shape {ids.shape}, expected {(len(ctx), k)}")
        ok = (ids >= 0) & (ids < len(lookup))
        return np.where(ok, lookup[np.clip(ids, 0, len(lookup) - 1)], 0)

    return topk

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "ml-100k"

# Environment variables that slow OpenBLAS down when set; the benchmark scripts
# re-exec themselves without them (see strip_openblas_env in each script).
OPENBLAS_ENV_TO_UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# --------------------------------------------------------------------------- data


@dataclass
class Dataset:
    contexts: list[list[int]]  # per user, internal ids, oldest first (= training sequences)
    targets: np.ndarray  # (U,) internal id of the held-out item per user
    item_ids: np.ndarray  # (V+1,) original id of each internal id; item_ids[0] = -1 (padding)
    item_to_idx: dict[int, int]  # original id -> internal id
    users: np.ndarray  # (U,) original user id of each row

    @property
    def n_items(self) -> int:  # V
        return len(self.item_ids) - 1

    def to_original(self, seqs: Sequence[Sequence[int]]) -> list[list[int]]:
        ids = self.item_ids
        return [[int(ids[i]) for i in s] for s in seqs]


def resolve_data_path(path: str | os.PathLike | None) -> Path:
    p = Path(path) if path else DEFAULT_DATA
    if p.is_dir():
        p = p / "u.data"
    if not p.exists():
        raise SystemExit(
            f"MovieLens 100K not found at {p}. Pass --data PATH (a folder holding u.data, or the file)."
        )
    return p


def load_ml100k(path: str | os.PathLike | None = None) -> Dataset:
    """Leave-last-out split of MovieLens 100K (u.data: user, item, rating, unix time)."""
    raw = np.loadtxt(resolve_data_path(path), dtype=np.int64, delimiter="\t")
    user, item, ts = raw[:, 0], raw[:, 1], raw[:, 3]
    order = np.lexsort((ts, user))  # stable: by user, then time, ties in file order
    user, item = user[order], item[order]

    item_ids = np.unique(item)
    item_to_idx = {int(o): i + 1 for i, o in enumerate(item_ids)}
    internal = np.searchsorted(item_ids, item) + 1

    users, starts = np.unique(user, return_index=True)
    ends = np.append(starts[1:], len(user))
    contexts, targets, kept = [], [], []
    for u, s, e in zip(users, starts, ends):
        if e - s < 2:
            continue
        seq = internal[s:e]
        contexts.append(seq[:-1].tolist())
        targets.append(int(seq[-1]))
        kept.append(u)
    return Dataset(
        contexts=contexts,
        targets=np.asarray(targets, dtype=np.int64),
        item_ids=np.concatenate([[-1], item_ids]).astype(np.int64),
        item_to_idx=item_to_idx,
        users=np.asarray(kept, dtype=np.int64),
    )


def tokens_per_epoch(train_seqs: Sequence[Sequence[int]], max_seq: int) -> int:
    """Target positions trained per epoch: sum over sequences of min(len, max_seq+1) - 1."""
    return int(sum(min(len(s), max_seq + 1) - 1 for s in train_seqs if len(s) >= 2))


# --------------------------------------------------------------------------- metrics


def evaluate(
    topk_fn: Callable[[list[list[int]]], np.ndarray],
    contexts: Sequence[Sequence[int]],
    targets: np.ndarray,
    k: int = 10,
    batch_size: int = 256,
) -> dict[str, float]:
    """HR@K and NDCG@K.

    topk_fn(contexts) must return (B, >=K) internal ids, best first, ranked over the
    full catalogue with each context's own items excluded. NDCG uses 1/log2(rank+2)
    for the 0-based rank of the target when it is within the top K.
    """
    hits = np.zeros(len(contexts))
    ndcg = np.zeros(len(contexts))
    for s in range(0, len(contexts), batch_size):
        ctx = [list(c) for c in contexts[s : s + batch_size]]
        top = np.asarray(topk_fn(ctx))[:, :k]
        tgt = np.asarray(targets[s : s + batch_size])[:, None]
        match = top == tgt
        found = match.any(axis=1)
        rank = match.argmax(axis=1)
        hits[s : s + len(ctx)] = found
        ndcg[s : s + len(ctx)] = np.where(found, 1.0 / np.log2(rank + 2.0), 0.0)
    return {f"HR@{k}": float(hits.mean()), f"NDCG@{k}": float(ndcg.mean())}


def topk_from_scores(scores: np.ndarray, contexts: Sequence[Sequence[int]], k: int) -> np.ndarray:
    """Top-K internal ids from (B, V+1) scores, padding id 0 and context items excluded.

    Ties are broken by the lower internal id.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    scores[:, 0] = -np.inf
    for b, c in enumerate(contexts):
        if len(c):
            scores[b, np.asarray(c, dtype=np.int64)] = -np.inf
    # A stable sort breaks ties by the lower internal id, so results are deterministic.
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def most_popular_topk_fn(train_seqs: Sequence[Sequence[int]], n_items: int):
    """Most-popular-unseen: items ranked by count in the training sequences (ties: lower id)."""
    counts = np.zeros(n_items + 1, dtype=np.float64)
    for s in train_seqs:
        np.add.at(counts, np.asarray(s, dtype=np.int64), 1.0)

    def topk(contexts: list[list[int]], k: int = 10) -> np.ndarray:
        return topk_from_scores(np.broadcast_to(counts, (len(contexts), n_items + 1)), contexts, k)

    return topk


# --------------------------------------------------------------------------- reporting


def in_fresh_process(fn: Callable, *args, **kw):
    """fn(*args, **kw) in a fresh (spawned) process, its result returned.  The PyTorch
    reference runs this way beside fastsasrec: PyTorch's wheels carry a libgomp.so.1,
    which fastsasrec's engine shares within a process (the loader keeps one copy per
    name), with the waiting policy of whichever loaded first (BENCHMARKS.md, "OpenMP
    waiting").  Apart, each library runs at its own defaults, as it would alone."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args, kw)


def median_time(fn: Callable[[], object], reps: int) -> float:
    """The median wall time in seconds of `reps` calls of fn, after one untimed call
    (allocations, warm-up)."""
    import time

    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None,
                   formats: dict[str, str] | None = None) -> str:
    """Rows of dicts as a markdown table; formats maps a column to a format spec (".1f")."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())
    formats = formats or {}

    def fmt(v, spec=None):
        if v is None:
            return "—"
        if spec is not None and isinstance(v, (int, float)):
            return format(v, spec)
        if isinstance(v, float):
            if v != v:
                return "—"
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4f}"
        return str(v)

    cells = [[fmt(r.get(c), formats.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), sep, *(line(r) for r in cells)])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.lower().startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for ln in out.splitlines():
            if ln.startswith("Model name"):
                return ln.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def _version(mod: str) -> str | None:
    m = sys.modules.get(mod)
    if m is None:
        try:
            from importlib.metadata import version

            return version(mod)
        except Exception:
            return None
    return getattr(m, "__version__", "unknown")


def machine_info(threads: int | None = None) -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "threads_used": threads,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    for mod in ("numpy", "torch", "fastsasrec"):
        info[mod] = _version(mod)
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            import re

            cfg = torch.__config__.show()
            cap = re.search(r"CPU capability usage:\s*(\w+)", cfg)
            blas = re.search(r"BLAS_INFO=(\w+)", cfg)
            info["torch_build"] = f"BLAS {blas.group(1) if blas else '?'}, CPU capability {cap.group(1) if cap else '?'}"
        except Exception:
            pass
    info["openblas_env_unset"] = all(k not in os.environ for k in OPENBLAS_ENV_TO_UNSET)
    return info


def print_machine_info(info: dict) -> None:
    print("## Machine")
    for k, v in info.items():
        if v is not None:
            print(f"- {k}: {v}")
    print()
