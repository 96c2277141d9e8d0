"""The worker process of tests/test_fuzz.py: it holds a few tiny fitted models, runs each
case it is sent (fit, recommend, recommend_batch, load, ...) and checks the outcome, so that
a crash or a hang of the engine ends this process, never the test run.

Protocol: the parent writes ``(op, case)`` pickles to the file descriptor given as argv[2]
and reads one reply per case from argv[3]: ``("accepted", summary)``, ``("rejected",
exception type, message)`` or ``("wrong", what)``.  A case that makes this process die or
not answer in time is the parent's to count (a crash or a hang).

A call's outcome is right when it either returns a well-formed result (checked here
against an independent oracle: the catalogue, the exclusions, the item embeddings and
session states, the popularity ranking) or raises ValueError, TypeError, MemoryError or
RuntimeError (only "not fitted", and "diverged" for fit) with a message.  Anything else
is "wrong": another exception type, an empty message, a malformed result, a wrong answer,
or an input that had to be accepted and was refused.
"""
from __future__ import annotations

import io
import json
import math
import os
import pickle
import sys
import tempfile
import traceback
import warnings
import zipfile
import zlib
from multiprocessing.connection import Connection

# ----------------------------------------------------------------------------- the models
# Shared with the parent (which draws known ids from them): keep this part free of imports
# beyond the standard library.
INT_IDS = list(range(1, 25))                              # contiguous: encode subtracts
SPARSE_IDS = [-2**63, -2**40, -7, 0, 3, 4, 9, 2**31, 2**53 + 1, 2**62, 2**63 - 1]  # searchsorted
STR_IDS = ["a", "b", "c", "A", "0", "-1", "é", "日本", "x y", " a", "🙂", "long" * 10, "z"]
ONE_IDS = [7]                                             # a catalogue of one item

# name -> (catalogue, constructor parameters).  Tiny: factors 8, max_seq 5, 1-2 epochs.
MODELS = {
    "int": (INT_IDS, dict(factors=8, n_layers=1, n_heads=2, max_seq=5, loss="softmax",
                          iterations=2, batch_size=8, num_threads=2)),
    "sparse": (SPARSE_IDS, dict(factors=8, n_layers=1, n_heads=1, max_seq=5, loss="bce",
                                precision="bf16", iterations=2, batch_size=8, num_threads=1)),
    "str": (STR_IDS, dict(factors=8, n_layers=1, n_heads=4, max_seq=5, loss="sampled_softmax",
                          n_negatives=4, iterations=1, batch_size=8, num_threads=1)),
    "one": (ONE_IDS, dict(factors=8, n_layers=0, max_seq=5, loss="softmax", iterations=1,
                          num_threads=1)),
    # with item features and names (feature_table): a format-3 file; ids 25-27 are new
    # products, in the table and in no training sequence
    "feat": (INT_IDS + [25, 26, 27], dict(factors=8, n_layers=1, n_heads=1, max_seq=5,
                                           loss="softmax", iterations=2, batch_size=8,
                                           num_threads=1, feature_buckets=3)),
}


def feature_table(ids):
    """The "feat" model's item features: a category, a list of tags, a price, a name."""
    import pandas as pd

    return pd.DataFrame({"category": [f"c{i % 3}" for i in ids],
                         "tags": [[f"t{i % 4}", f"t{i % 5}"] for i in ids],
                         "price": [float(i * 1.5) for i in ids],
                         "name": [f"item {i}" for i in ids]}, index=list(ids))
FITTED = tuple(MODELS)                 # the models a case can name, plus "unfitted"
MODEL_NAMES = FITTED + ("unfitted",)


def training_sequences(ids, seed=0, n=40):
    """Deterministic walks over a catalogue (sequences of 2..8 ids, every id used)."""
    import random

    rng = random.Random(seed)
    out = [[ids[i % len(ids)], ids[(i + 1) % len(ids)]] for i in range(len(ids))]
    for _ in range(n):
        start = rng.randrange(len(ids))
        out.append([ids[(start + k * rng.choice((1, 1, 2))) % len(ids)]
                    for k in range(rng.randrange(2, 9))])
    return out


# ----------------------------------------------------------------------------- the worker
WORKER = __name__ == "__main__"
if WORKER:
    import numpy as np
    import pandas as pd

    import fastsasrec
    from fastsasrec import SASRec, Sequences

    warnings.simplefilter("ignore")  # the short-sequence warning, numpy's casts: not findings

ALLOWED = (ValueError, TypeError, MemoryError, RuntimeError)


class Wrong(Exception):
    """A property the outcome of a case breaks."""


# ---- building the inputs a case describes
def build(recipe):
    """The object a case passes for "sessions" / "sequences": most come as they are, the
    ones that cannot travel (iterators) or whose construction is itself under test
    (Sequences) as a recipe."""
    tag = recipe[0]
    if tag == "obj":
        return recipe[1]
    if tag == "seq":  # the constructor is under test too: its errors are outcomes
        return Sequences(recipe[1], recipe[2])
    if tag == "iter":
        return iter(recipe[1])
    if tag == "map":
        return map(list, recipe[1])
    if tag == "series":
        return pd.Series(recipe[1], dtype=object)
    raise AssertionError(f"unknown recipe {tag!r}")


def as_list(x):
    """A session as a list of plain Python values (numpy scalars and 0-d arrays unwrapped:
    numpy takes np.array(5) for the integer 5)."""
    if isinstance(x, np.ndarray):
        x = x.tolist()  # an object array's entries stay numpy scalars
    elif isinstance(x, pd.Series):
        x = x.to_list()
    return [v.item() if isinstance(v, np.generic) or (isinstance(v, np.ndarray) and v.ndim == 0)
            else v for v in x]


def view_of(recipe):
    """The sessions of an accepted input as lists of plain values, read from the recipe (an
    iterator is consumed by the call)."""
    tag = recipe[0]
    if tag in ("iter", "map"):
        return [as_list(s) for s in recipe[1]]
    obj = build(recipe)
    if isinstance(obj, Sequences):
        return [s.tolist() for s in obj]
    if isinstance(obj, pd.Series):
        obj = obj.to_list()
    if isinstance(obj, np.ndarray):
        return [as_list(s) for s in list(obj)]
    if isinstance(obj, dict):
        obj = list(obj.values())
    return [as_list(s) for s in obj]


def id_kind(v):
    """"int" or "str" for a valid item id, None for anything else."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return "int" if -2**63 <= v < 2**63 else None
    if isinstance(v, str):
        return "str"
    return None


def check_ids_valid(view, what):
    """An accepted input's ids are all integers in int64 or all strings."""
    kinds = set()
    for i, s in enumerate(view):
        for j, v in enumerate(s):
            k = id_kind(v)
            if k is None:
                raise Wrong(f"{what} accepted {v!r} ({type(v).__name__}) at [{i}][{j}]: not an item id")
            kinds.add(k)
    if len(kinds) > 1:
        raise Wrong(f"{what} accepted a mix of integer and string ids")
    return kinds.pop() if kinds else None


# ---- the oracle
class Oracle:
    """What a fitted model must answer, from its catalogue, item embeddings, session
    states and popularity (read once; the model is never refitted while checked)."""

    def __init__(self, model):
        self.model = model
        self.ids = model.item_ids
        self.V = int(self.ids.size)
        self.is_str = self.ids.dtype.kind == "U"
        self.index = {v: i for i, v in enumerate(self.ids.tolist())}
        self.filler = "" if self.is_str else -1
        self.E = np.asarray(model.item_embeddings, dtype=np.float64)
        self.norms = np.linalg.norm(self.E, axis=1)
        pop = [int(p) for p in model._popularity.tolist()]
        total = max(sum(pop), 1)
        self.share = [p / total for p in pop]
        self.popular = sorted(range(self.V), key=lambda i: (-self.share[i], i))
        bf16 = str(model._config.get("precision", "fp32")) == "bf16"
        self.rtol = 3e-2 if bf16 else 1e-4

    def known(self, session):
        """The session's items in the catalogue (internal 0-based indices, in order)."""
        kind = "str" if self.is_str else "int"
        return [self.index[v] for v in session if id_kind(v) == kind and v in self.index]

    def states(self, knowns):
        """Session states of the sessions given as lists of known catalogue ids (one
        session_embeddings call on plain lists: the simplest input path)."""
        if not knowns:
            return np.zeros((0, self.E.shape[1]))
        lists = [[self.ids[i].item() for i in k] for k in knowns]
        return np.asarray(self.model.session_embeddings(lists), dtype=np.float64)

    def check_row(self, ids, scores, n_req, excluded, known, h, where):
        """One row (1-D ids and scores of one session) against the oracle.  ``excluded``:
        the set of catalogue indices that may not appear; ``known``: the session's known
        items (cold when empty); ``h``: its state (None when cold)."""
        ids = ids.tolist()
        scores = scores.tolist()
        want = min(n_req, self.V - len(excluded))
        real = [i for i, v in enumerate(ids) if v != self.filler]
        if real != list(range(len(real))):
            raise Wrong(f"{where}: empty slots before real ones: {ids}")
        if len(real) != want:
            raise Wrong(f"{where}: {len(real)} items, expected min(n={n_req}, "
                        f"{self.V} items - {len(excluded)} excluded) = {want}: {ids}")
        for v, s in zip(ids[len(real):], scores[len(real):]):
            if s != -math.inf:
                raise Wrong(f"{where}: empty slot with score {s}")
        idx = []
        for v in ids[:want]:
            if v not in self.index or type(v) is not (str if self.is_str else int):
                raise Wrong(f"{where}: id {v!r} is not in the catalogue")
            idx.append(self.index[v])
        if len(set(idx)) != len(idx):
            raise Wrong(f"{where}: repeated ids {ids}")
        bad = [self.ids[i].item() for i in idx if i in excluded]
        if bad:
            raise Wrong(f"{where}: excluded items returned: {bad}")
        s = scores[:want]
        if any(math.isnan(x) for x in s):
            raise Wrong(f"{where}: NaN score {s}")
        if any(a < b for a, b in zip(s, s[1:])):
            raise Wrong(f"{where}: scores not sorted descending: {s}")
        if not known:  # cold: the most popular items, scored by their share
            expect = [i for i in self.popular if i not in excluded][:want]
            if idx != expect:
                raise Wrong(f"{where}: cold session got {ids[:want]}, the most popular are "
                            f"{[self.ids[i].item() for i in expect]}")
            for i, x in zip(idx, s):
                if not math.isclose(x, self.share[i], rel_tol=1e-6, abs_tol=1e-12):
                    raise Wrong(f"{where}: popular item {self.ids[i].item()!r} scored {x}, its "
                                f"share is {self.share[i]}")
            return
        all_scores = self.E @ h
        hn = float(np.linalg.norm(h))
        for i, x in zip(idx, s):
            tol = self.rtol * (self.norms[i] * hn + 1.0)
            if not abs(x - all_scores[i]) <= tol:
                raise Wrong(f"{where}: item {self.ids[i].item()!r} scored {x}, its embedding "
                            f"times the session state gives {all_scores[i]}")
        if want:
            rest = [i for i in range(self.V) if i not in excluded and i not in set(idx)]
            if rest:
                best = max(rest, key=lambda i: all_scores[i])
                tol = self.rtol * (self.norms[best] * hn + 1.0) * 2
                if all_scores[best] > s[-1] + tol:
                    raise Wrong(f"{where}: item {self.ids[best].item()!r} (score "
                                f"{all_scores[best]}) beats the last returned {s[-1]}")

    def check_batch(self, ids, scores, view, n_req, exclude_seen):
        """recommend_batch's (ids, scores) for the sessions ``view``."""
        B = len(view)
        n_eff = min(n_req, self.V)
        for name, a in (("ids", ids), ("scores", scores)):
            if not isinstance(a, np.ndarray):
                raise Wrong(f"recommend_batch {name} is a {type(a).__name__}, not an array")
            if a.shape != (B, n_eff):
                raise Wrong(f"recommend_batch {name} has shape {a.shape}, expected ({B}, {n_eff})")
        if scores.dtype != np.float32:
            raise Wrong(f"recommend_batch scores are {scores.dtype}, not float32")
        if ids.dtype.kind != ("U" if self.is_str else "i"):
            raise Wrong(f"recommend_batch ids are {ids.dtype} for a catalogue of {self.ids.dtype}")
        knowns = [self.known(s) for s in view]
        warm = [b for b in range(B) if knowns[b]]
        H = self.states([knowns[b] for b in warm])
        h_of = dict(zip(warm, H))
        for b in range(B):
            excluded = set(knowns[b]) if exclude_seen else set()
            self.check_row(ids[b], scores[b], n_eff, excluded, knowns[b], h_of.get(b),
                           f"recommend_batch row {b}")

    def check_single(self, ids, scores, session_view, n_req, exclude_seen, exclude_view):
        for name, a in (("ids", ids), ("scores", scores)):
            if not isinstance(a, np.ndarray) or a.ndim != 1:
                raise Wrong(f"recommend {name} is not a 1-D array: {a!r}")
        if ids.shape != scores.shape:
            raise Wrong(f"recommend ids {ids.shape} and scores {scores.shape} differ in shape")
        if scores.dtype != np.float32:
            raise Wrong(f"recommend scores are {scores.dtype}, not float32")
        if ids.size and ids.dtype.kind != ("U" if self.is_str else "i"):
            raise Wrong(f"recommend ids are {ids.dtype} for a catalogue of {self.ids.dtype}")
        known = self.known(session_view)
        excluded = set(known) if exclude_seen else set()
        if exclude_view is not None:
            excluded |= set(self.known(exclude_view))
        h = self.states([known])[0] if known else None
        self.check_row(ids, scores, min(n_req, self.V), excluded, known, h, "recommend")


def n_value(n):
    """n as the int it stands for, for an accepted call."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
        raise Wrong(f"n={n!r} ({type(n).__name__}) was accepted")
    return int(n)


def k_values(k):
    """evaluate's k as the cut-offs it stands for (an int, or a non-empty list of them)."""
    if isinstance(k, (list, tuple, range, np.ndarray)):
        ks = [n_value(x) for x in (np.asarray(k, dtype=object).tolist() if isinstance(k, np.ndarray) else k)]
        if not ks:
            raise Wrong(f"k={k!r} (empty) was accepted")
        return ks
    return [n_value(k)]


def truth(flag, used):
    """bool(flag) of an accepted exclude_seen; one without a truth value (an array) is
    accepted only by a call that never needed it (no session had a known item)."""
    try:
        return bool(flag)
    except (ValueError, TypeError):
        if used:
            raise Wrong(f"exclude_seen={flag!r} has no truth value but was used") from None
        return False


def outcome(fn, runtime_ok=("not fitted",)):
    """("accepted", value) or ("rejected", type, message); Wrong for a disallowed error.
    A RuntimeError is allowed only when its message says one of ``runtime_ok``."""
    try:
        return ("accepted", fn())
    except Wrong:
        raise
    except ALLOWED as e:
        msg = str(e)
        if not msg.strip():
            raise Wrong(f"{type(e).__name__} without a message\n{traceback.format_exc()}")
        if isinstance(e, RuntimeError) and not any(s in msg for s in runtime_ok):
            raise Wrong(f"{type(e).__name__} that is not {' or '.join(runtime_ok)}: {msg}\n"
                        f"{traceback.format_exc()}")
        return ("rejected", type(e).__name__, msg)
    except BaseException as e:  # noqa: B902 - every other type is a finding
        raise Wrong(f"unexpected {type(e).__name__}: {e}\n{traceback.format_exc()}")


def transform(orig, spec):
    """A member's array changed as ``spec`` says (unchanged where it cannot apply)."""
    op, a = spec[0], orig.copy()
    try:
        if op == "astype":
            return a.astype(spec[1])
        if op == "set":
            if a.size:
                a[spec[1] % a.size] = spec[2]
            return a
        if op == "reverse":
            return a[::-1].copy()
        if op == "repeat_first":
            if a.size > 1:
                a[1] = a[0]
            return a
        if op == "drop_last":
            return a[:-1].copy()
        if op == "append":
            return np.append(a, a[-1:])
        if op == "big_endian":
            return a.astype(a.dtype.newbyteorder(">"))
        if op == "2d":
            return a.reshape(1, -1)
        if op == "empty":
            return a[:0].copy()
        if op == "fortran":
            return np.asfortranarray(np.stack([a, a], axis=1))
        if op == "zeros":
            return np.zeros_like(a)
        if op == "huge_popularity":  # sums beyond int64
            return np.full_like(a, 2**62) if a.dtype.kind == "i" else a
    except (ValueError, TypeError, OverflowError):
        return orig
    raise AssertionError(f"unknown transform {op!r}")


def transform_bytes(data, spec):
    """The header's bytes changed as a transform says (for the JSON member)."""
    return {"reverse": data[::-1], "drop_last": data[:-1], "append": data + b"}",
            "empty": b"", "zeros": bytes(len(data))}.get(spec[0], data)


class Worker:
    def __init__(self, models_dir):
        self.models_dir = models_dir
        self.tmp = tempfile.mkdtemp(prefix="worker-", dir=models_dir)  # the files under test
        self.models = {}
        self.oracles = {}
        for name, (ids, params) in MODELS.items():
            path = os.path.join(models_dir, name + ".fsr")
            if not os.path.exists(path):
                kw = {"item_features": feature_table(ids), "item_names": "name"} if name == "feat" else {}
                trained_on = [i for i in ids if i <= 24] if name == "feat" else ids
                m = SASRec(device="cpu", random_state=0, **params).fit(training_sequences(trained_on), **kw)
                m.save(path)
            self.models[name] = SASRec.load(path, device="cpu", num_threads=params["num_threads"])
        self.models["unfitted"] = SASRec(device="cpu", **MODELS["int"][1])
        self.files = {}  # the saved files, which the load cases damage
        for name in MODELS:
            with open(os.path.join(models_dir, name + ".fsr"), "rb") as f:
                self.files[name] = f.read()
        self.originals = {name: self.arrays(self.models[name]) for name in MODELS}

    def oracle(self, name):
        if name not in self.oracles:
            self.oracles[name] = Oracle(self.models[name])
        return self.oracles[name]

    @staticmethod
    def arrays(m):
        return (np.asarray(m._engine.get_params()).copy(), m.item_ids.copy(),
                np.asarray(m._popularity).copy())

    # ---- recommend_batch
    def op_recommend_batch(self, case):
        name, recipe, n, exclude_seen, must_accept = (case[k] for k in
                                                      ("model", "sessions", "n", "exclude_seen", "must_accept"))
        m = self.models[name]
        res = outcome(lambda: m.recommend_batch(build(recipe), n=n, exclude_seen=exclude_seen))
        if res[0] == "rejected":
            if must_accept:
                raise Wrong(f"a valid input was refused: {res[1]}: {res[2]}")
            return res
        ids, scores = res[1]
        if name == "unfitted":
            raise Wrong("an unfitted model answered recommend_batch")
        n_req = n_value(n)
        view = view_of(recipe)
        o = self.oracle(name)
        kind = check_ids_valid(view, "recommend_batch")
        if kind is not None and kind != ("str" if o.is_str else "int"):
            raise Wrong(f"recommend_batch accepted {kind} ids for a model of {o.ids.dtype} ids")
        o.check_batch(ids, scores, view, n_req, truth(exclude_seen, any(map(o.known, view))))
        # session_embeddings takes the same input: NaN rows for the sessions with no known
        # item, the oracle's states for the others.
        H = m.session_embeddings(build(recipe))
        knowns = [o.known(s) for s in view]
        warm = [b for b in range(len(view)) if knowns[b]]
        if H.shape != (len(view), o.E.shape[1]) or H.dtype != np.float32:
            raise Wrong(f"session_embeddings gave {H.shape} {H.dtype} for {len(view)} sessions")
        cold = [b for b in range(len(view)) if not knowns[b]]
        if not np.isnan(H[cold]).all() or not np.isfinite(H[warm]).all():
            raise Wrong("session_embeddings: NaN rows are not exactly the cold sessions")
        if warm and not np.allclose(H[warm], o.states([knowns[b] for b in warm]), rtol=1e-4, atol=1e-5):
            raise Wrong("session_embeddings differs from the states of the sessions' known items")
        # recommend() of each session answers its row (the real items of it), bit for bit.
        if recipe[0] in ("iter", "map"):
            singles = [s for s in recipe[1]]
        else:
            obj = build(recipe)
            if isinstance(obj, pd.Series):
                obj = obj.to_list()
            singles = list(obj.values()) if isinstance(obj, dict) else list(obj)
        try:
            bool(exclude_seen)
        except (ValueError, TypeError):  # taken only because no session needed it
            singles = []
        for b, s in enumerate(singles[:6]):
            r = outcome(lambda: m.recommend(s, n=n, exclude_seen=exclude_seen))
            if r[0] != "accepted":
                raise Wrong(f"recommend refused session {b} that recommend_batch took: {r[1]}: {r[2]}")
            i1, s1 = r[1]
            real = ids[b] != o.filler
            if not (np.array_equal(i1, ids[b][real]) and np.array_equal(s1, scores[b][real])):
                raise Wrong(f"recommend({s!r}) = {i1.tolist()}, {s1.tolist()} but row {b} of "
                            f"recommend_batch is {ids[b].tolist()}, {scores[b].tolist()}")
        return ("accepted", f"{len(view)} sessions")

    # ---- recommend
    def op_recommend(self, case):
        name, session, n, exclude_seen, exclude, must_accept = (
            case[k] for k in ("model", "session", "n", "exclude_seen", "exclude", "must_accept"))
        m = self.models[name]
        res = outcome(lambda: m.recommend(build(session), n=n, exclude_seen=exclude_seen,
                                          exclude=None if exclude is None else build(exclude)))
        if res[0] == "rejected":
            if must_accept:
                raise Wrong(f"a valid input was refused: {res[1]}: {res[2]}")
            return res
        if name == "unfitted":
            raise Wrong("an unfitted model answered recommend")
        ids, scores = res[1]
        n_req = n_value(n)
        o = self.oracle(name)
        sv = view_of(("obj", [build(session)]))[0] if session[0] not in ("iter", "map") else as_list(session[1])
        ev = None
        if exclude is not None and (exclude[0] != "obj" or exclude[1] is not None):
            ev = view_of(("obj", [build(exclude)]))[0] if exclude[0] not in ("iter", "map") else as_list(exclude[1])
        kinds = {check_ids_valid([sv], "recommend session"), check_ids_valid([ev or []], "recommend exclude")}
        kinds.discard(None)
        want = "str" if o.is_str else "int"
        if kinds - {want}:
            raise Wrong(f"recommend accepted {kinds} ids for a model of {o.ids.dtype} ids")
        o.check_single(ids, scores, sv, n_req, truth(exclude_seen, bool(o.known(sv))), ev)
        return ("accepted", f"{ids.size} items")

    # ---- fit
    def op_fit(self, case):
        recipe, params, fit_kw, must_accept = (case[k] for k in ("sequences", "params", "fit_kw", "must_accept"))

        def run():
            m = SASRec(**params)
            kw = dict(fit_kw)
            if "validation" in kw:
                kw["validation"] = build(kw["validation"])
            return m.fit(build(recipe), **kw)

        res = outcome(run, runtime_ok=("diverged",))
        if res[0] == "rejected":
            if must_accept:
                raise Wrong(f"a valid fit was refused: {res[1]}: {res[2]}")
            return res
        m = res[1]
        view = view_of(recipe)
        check_ids_valid(view, "fit")
        used = [s for s in view if len(s) >= 2]
        cat = sorted(set(v for s in used for v in s))
        if m.item_ids.tolist() != cat:
            raise Wrong(f"fit's catalogue {m.item_ids.tolist()} is not the ids of its sequences {cat}")
        counts = {}
        for s in used:
            for v in s:
                counts[v] = counts.get(v, 0) + 1
        if m._popularity.tolist() != [counts[v] for v in cat]:
            raise Wrong(f"fit's popularity {m._popularity.tolist()} is not the counts {counts}")
        hist = m.loss_history_
        iters = m.fitted_params_["iterations"]
        if not all(math.isfinite(x) for x in hist) or len(hist) > iters or (
                "early_stopping_patience" not in fit_kw and len(hist) != iters):
            raise Wrong(f"loss history {hist} for {iters} iterations")
        o = Oracle(m)
        sessions = [s[-6:] for s in used[:4]] + [[]]
        ids, scores = m.recommend_batch(sessions, n=3)
        o.check_batch(ids, scores, sessions, 3, True)
        return ("accepted", f"{o.V} items, loss {m.loss_}")

    # ---- load
    def mutate(self, case):
        """The bytes of the model file a load case describes, and whether a successful
        load must give back the original arrays (True), the replacement's (an array), or
        only a well-formed model (None)."""
        base = case["model"]
        data = self.files[base]
        kind = case["kind"]
        if kind == "raw":
            return case["bytes"], None
        if kind == "truncate":
            return data[:case["at"] % (len(data) + 1)], True
        if kind == "flip":
            b = bytearray(data)
            for pos, x in case["flips"]:
                b[pos % len(b)] ^= x
            return bytes(b), True
        if kind == "splice":
            pos = case["at"] % (len(data) + 1)
            return data[:pos] + case["bytes"] + data[pos + case["drop"]:], True
        members = {}
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for info in z.infolist():
                members[info.filename] = z.read(info)
        meta = json.loads(members["fastsasrec.json"])
        expect = True
        if kind == "header":
            meta = edit_json(meta, case["path"], case["action"], case.get("value"))
        elif kind == "member":
            name = case["member"]
            new = case["content"]
            if isinstance(new, tuple) and new[0] == "pickle":
                new = pickle_bomb(os.path.join(self.tmp, "UNPICKLED"))
            elif isinstance(new, tuple) and new[0] == "transform":
                if name == "fastsasrec.json":
                    new = transform_bytes(members[name], new[1:])
                else:
                    orig = np.load(io.BytesIO(members[name]), allow_pickle=False)
                    buf = io.BytesIO()
                    try:
                        np.lib.format.write_array(buf, transform(orig, new[1:]), allow_pickle=False)
                    except ValueError:
                        np.lib.format.write_array(buf, orig, allow_pickle=False)
                    new = buf.getvalue()
            elif isinstance(new, tuple) and new[0] == "other":
                with zipfile.ZipFile(io.BytesIO(self.files[new[1]])) as z:
                    new = z.read(name) if name in z.namelist() else b""
            elif isinstance(new, np.ndarray):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, new, allow_pickle=False)
                new = buf.getvalue()
            if name == "fastsasrec.json":
                members[name] = new
                meta = None
            else:
                members[name] = new
                if case.get("update_sha"):
                    import hashlib

                    meta.setdefault("sha256", {})
                    if isinstance(meta["sha256"], dict):
                        meta["sha256"][name] = hashlib.sha256(new).hexdigest()
                    expect = None
                elif case.get("drop_sha"):
                    meta.pop("sha256", None)
                    expect = None
        elif kind == "rezip":
            pass
        elif kind == "drop_member":
            members.pop(case["member"], None)
        elif kind == "extra_member":
            members[case["member"]] = case["bytes"]
        if meta is not None:
            members["fastsasrec.json"] = json.dumps(meta, indent=1).encode()
        order = list(members)
        if case.get("order"):
            order = sorted(order, key=lambda k: zlib.crc32(f"{k}{case['order']}".encode()))
        buf = io.BytesIO()
        compression = case.get("compression", zipfile.ZIP_STORED)
        with zipfile.ZipFile(buf, "w", compression) as z:
            for k in order:
                z.writestr(k, members[k])
            if case.get("duplicate"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    z.writestr(case["duplicate"], members.get(case["duplicate"], b""))
        return buf.getvalue(), expect

    def op_load(self, case):
        data, expect = self.mutate(case)
        path = os.path.join(self.tmp, "model.fsr")
        with open(path, "wb") as f:
            f.write(data)
        marker = os.path.join(self.tmp, "UNPICKLED")
        res = outcome(lambda: SASRec.load(path, device=case["device"], num_threads=case["num_threads"]))
        if os.path.exists(marker):
            os.unlink(marker)
            raise Wrong("load unpickled an object array from the file")
        if res[0] == "rejected":
            if case.get("must_accept"):
                raise Wrong(f"a valid file was refused: {res[1]}: {res[2]}")
            return res
        m = res[1]
        if expect is True:
            for what, a, b in zip(("weights", "item ids", "popularity"), self.arrays(m),
                                  self.originals[case["model"]]):
                if a.dtype != b.dtype or not np.array_equal(a, b):
                    raise Wrong(f"load of a damaged file succeeded with other {what} than saved")
        nt = case["num_threads"]
        if nt is not None and m.num_threads != nt:
            raise Wrong(f"loaded with num_threads={nt!r}, the model has {m.num_threads}")
        o = Oracle(m)
        cat = m.item_ids.tolist()
        sessions = [cat[:3], cat[-2:], [], cat[::2][:5]]
        ids, scores = m.recommend_batch(sessions, n=4)
        o.check_batch(ids, scores, sessions, 4, True)
        i1, s1 = m.recommend(cat[:2], n=2, exclude=cat[2:3])
        o.check_single(i1, s1, cat[:2], 2, True, cat[2:3])
        return ("accepted", f"{o.V} items")

    # ---- parameters
    def op_params(self, case):
        def run():
            m = SASRec(**case["init"])
            got1 = m.get_params()
            if case["set"] is not None:
                m.set_params(**case["set"])
            return got1, m.get_params()

        res = outcome(run)
        if res[0] == "rejected":
            if case["must_accept"]:
                raise Wrong(f"valid parameters were refused: {res[1]}: {res[2]}")
            return res
        from fastsasrec._params import AUTO, PARAMS, LOSSES, NEGATIVES, PRECISIONS, ENGINE

        for got, given in zip(res[1], (case["init"], dict(case["init"], **(case["set"] or {})))):
            for k, (kind, _) in PARAMS.items():
                v = got[k]
                if k in AUTO and v == "auto":
                    continue
                ok = {"int": lambda v: type(v) is int,
                      "float": lambda v: type(v) is float and math.isfinite(v),
                      "flag": lambda v: v is None or type(v) is bool,
                      "choice": lambda v: v in {"loss": LOSSES, "negatives": NEGATIVES,
                                                "precision": PRECISIONS}.get(k, ENGINE[k]["choices"]),
                      "device": lambda v: v in ("auto", "cpu", "cuda"),
                      "seed": lambda v: v is None or (type(v) is int and 0 <= v < 2**63)}[kind](v)
                if not ok:
                    raise Wrong(f"get_params()[{k!r}] = {v!r} ({type(v).__name__}) after {given}")
                if k in given and not (v == given[k] or (v is None and given[k] is None)):
                    raise Wrong(f"{k}={given[k]!r} was accepted but get_params() says {v!r}")
        return ("accepted", "")

    # ---- evaluate
    def op_evaluate(self, case):
        name, recipe = case["model"], case["sequences"]
        m = self.models[name]
        res = outcome(lambda: m.evaluate(build(recipe), k=case["k"], protocol=case["protocol"],
                                         n_negatives=case["n_negatives"],
                                         random_state=case["random_state"]))
        if res[0] == "rejected":
            if case["must_accept"]:
                raise Wrong(f"a valid evaluate was refused: {res[1]}: {res[2]}")
            return res
        if name == "unfitted":
            raise Wrong("an unfitted model answered evaluate")
        out = res[1]
        ks = k_values(case["k"])
        view = view_of(recipe)
        check_ids_valid(view, "evaluate")
        used = [s for s in view if len(s) >= 2]
        if out.get("n") != len(used):
            raise Wrong(f"evaluate n={out.get('n')}, {len(used)} sequences have 2+ items")
        for k in ks:
            self.check_evaluate_at(m, name, case, out, used, k)
        return ("accepted", "")

    def check_evaluate_at(self, m, name, case, out, used, k):
        """The metrics at cut-off k of an accepted evaluate."""
        for key in (f"HR@{k}", f"NDCG@{k}", f"MRR@{k}"):
            v = out.get(key)
            if not isinstance(v, float) or not 0.0 <= v <= 1.0:
                raise Wrong(f"evaluate {key} = {v!r}")
        if not out[f"MRR@{k}"] <= out[f"NDCG@{k}"] + 1e-12 <= out[f"HR@{k}"] + 2e-12:
            raise Wrong(f"evaluate: not MRR <= NDCG <= HR: {out}")
        if out.get(f"MAP@{k}") != out[f"MRR@{k}"]:  # one target per sequence
            raise Wrong(f"evaluate: MAP@{k} is not MRR@{k} with one target: {out}")
        if case["protocol"] == "loo":
            o = self.oracle(name)
            hits = 0
            for s in used:  # each held-out item against recommend() of its context
                ids, _ = m.recommend(s[:-1], n=k)
                t = s[-1]
                hits += id_kind(t) == ("str" if o.is_str else "int") and t in o.index and t in ids.tolist()
            if not math.isclose(out[f"HR@{k}"], hits / len(used), abs_tol=1e-12):
                raise Wrong(f"evaluate HR@{k} = {out[f'HR@{k}']}, recommend() hits {hits} of {len(used)}")

    # ---- the harness's own check: what a crash and a hang look like
    def op_selftest(self, what):
        if what == "abort":
            os.abort()
        if what == "segfault":
            import ctypes

            ctypes.string_at(0)
        if what == "sleep":
            import time

            time.sleep(3600)
        return ("accepted", "")

    # ---- Sequences
    def op_sequences(self, case):
        res = outcome(lambda: Sequences(case["items"], case["offsets"]))
        if res[0] == "rejected":
            return res
        s = res[1]
        items = case["items"]
        lst = as_list(items)
        offs = np.asarray(case["offsets"]).tolist()
        if not (isinstance(offs, list) and offs and offs[0] == 0 and offs[-1] == len(lst)
                and all(a <= b for a, b in zip(offs, offs[1:]))):
            raise Wrong(f"Sequences accepted offsets {offs} for {len(lst)} items")
        check_ids_valid([lst], "Sequences")
        got = [x.tolist() for x in s]
        want = [lst[a:b] for a, b in zip(offs, offs[1:])]
        if got != want or len(s) != len(want) or s.items.flags.writeable or s.offsets.dtype != np.int64:
            raise Wrong(f"Sequences({items!r}, {case['offsets']!r}) reads back as {got}")
        back = pickle.loads(pickle.dumps(s))
        if [x.tolist() for x in back] != want:
            raise Wrong("Sequences does not survive pickling")
        return ("accepted", "")


def edit_json(meta, path, action, value):
    """The header with the value at ``path`` (keys and indices, taken modulo a list's length)
    set, deleted, nudged or given an unknown sibling."""
    node, parents = meta, []
    for p in path[:-1]:
        if isinstance(node, dict) and p in node:
            parents.append(node)
            node = node[p]
        elif isinstance(node, list) and node and isinstance(p, int):
            parents.append(node)
            node = node[p % len(node)]
        else:
            return meta  # the path is not there: nothing to edit
    last = path[-1]
    if isinstance(node, list):
        if not node or not isinstance(last, int):
            return meta
        last = last % len(node)
    elif not isinstance(node, dict):
        return meta
    if action == "set":
        node[last] = value
    elif action == "delete":
        if isinstance(node, dict):
            node.pop(last, None)
        else:
            del node[last]
    elif action == "nudge" and (isinstance(node, list) or last in node):
        v = node[last]
        if isinstance(v, bool):
            node[last] = not v
        elif isinstance(v, int):
            node[last] = v + value
        elif isinstance(v, float):
            node[last] = v * (1 + value)
        elif isinstance(v, str):
            node[last] = v[:-1] if value % 2 else v + "x"
    elif action == "add" and isinstance(node, dict):
        node["unknown_" + str(last)] = value
    return meta


def pickle_bomb(marker):
    """An .npy of dtype object whose unpickling creates ``marker``."""
    class Bomb:
        def __reduce__(self):
            return (open, (marker, "w"))

    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([Bomb(), Bomb()], dtype=object), allow_pickle=True)
    return buf.getvalue()


def main():
    conn_in = Connection(int(sys.argv[1]), writable=False)
    conn_out = Connection(int(sys.argv[2]), readable=False)
    worker = Worker(sys.argv[3])
    conn_out.send(("ready", os.getpid()))
    while True:
        try:
            op, case = conn_in.recv()
        except EOFError:
            return
        try:
            reply = getattr(worker, "op_" + op)(case)
        except Wrong as e:
            reply = ("wrong", str(e))
        except BaseException:  # the checks themselves failed: still a finding to see
            reply = ("wrong", "the check failed:\n" + traceback.format_exc())
        try:
            conn_out.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError):
            conn_out.send(("wrong", f"unpicklable reply {reply!r:.300}"))


if WORKER:
    if not fastsasrec._core.backend_available("cuda")[0]:
        # An allocation the engine cannot make must be a MemoryError, not the end of the
        # machine (CUDA maps more address space than this, so only without a GPU).
        import resource

        limit = int(os.environ.get("FASTSASREC_FUZZ_MEMORY", 4 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    main()
