"""Fuzzing what users pass to fit, recommend, recommend_batch, evaluate, load, Sequences and
the hyper-parameters, with hypothesis.

Every call must either return a well-formed, right result or raise ValueError, TypeError,
MemoryError or RuntimeError ("not fitted"; "diverged" for fit) with a message: never
another exception, never a crash, never a hang.  The engine-touching calls run in one
long-lived worker process (tests/_fuzz_worker.py) fed cases over a pipe, which also checks
each result against an oracle; a case that kills it is a crash, one it does not answer in
time a hang (the worker is then restarted and the run goes on).  Each property counts its
cases, accepted and rejected calls, crashes, hangs and wrong results, prints them at the
end of the run (and to $FASTSASREC_FUZZ_REPORT as JSON), and fails if any of the last
three is not zero, showing the first cases.

Profiles: "ci" (the default; derandomized, so every run of one command is the same 4,557
cases, about 30 s on two cores; hypothesis also draws constants from the modules loaded,
so ``pytest tests`` and ``pytest tests/test_fuzz.py`` run different cases, each run always
the same, and a failure prints its case) and "long" (108,000 cases, about 13 minutes):

    FASTSASREC_FUZZ=long FASTSASREC_FUZZ_REPORT=fuzz.json \\
        python -m pytest tests/test_fuzz.py -q -p no:cacheprovider --hypothesis-seed=0

FASTSASREC_FUZZ_FAILFAST=1 fails a property at its first bad case instead, so that
hypothesis shrinks it to a minimal one.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from decimal import Decimal
from fractions import Fraction
from multiprocessing.connection import Connection

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import _fuzz_worker as W

if os.name != "posix":  # pragma: no cover
    pytest.skip("the fuzz worker talks over inherited pipes (POSIX)", allow_module_level=True)

HERE = os.path.dirname(os.path.abspath(__file__))
PROFILE = os.environ.get("FASTSASREC_FUZZ", "ci")
FAILFAST = os.environ.get("FASTSASREC_FUZZ_FAILFAST") == "1"
REPORT = os.environ.get("FASTSASREC_FUZZ_REPORT")

_COMMON = dict(database=None, deadline=None, print_blob=False,
               suppress_health_check=list(HealthCheck))
settings.register_profile("ci", derandomize=True, **_COMMON)
settings.register_profile("long", derandomize=False, **_COMMON)
if PROFILE not in ("ci", "long"):
    raise RuntimeError(f"FASTSASREC_FUZZ must be 'ci' or 'long', got {PROFILE!r}")

# Cases per property (plus the explicit @examples).  ci: 4,550 (about 30 s on two cores);
# long: 108,000 (about 13 minutes).
EXAMPLES = {
    "ci": dict(recommend_batch=1000, recommend=1000, fit=400, load=1000, evaluate=250,
               params=400, sequences=500),
    "long": dict(recommend_batch=30000, recommend=30000, fit=8000, load=20000, evaluate=4000,
                 params=8000, sequences=8000),
}[PROFILE]
TIMEOUT = {"fit": 120.0}  # seconds a case may take before it counts as a hang; others 60


def fuzz_settings(prop):
    phases = (Phase.explicit, Phase.generate) + ((Phase.shrink,) if FAILFAST else ())
    return settings(settings.get_profile(PROFILE), max_examples=EXAMPLES[prop], phases=phases)


# ----------------------------------------------------------------------------- the tally
@dataclasses.dataclass
class Tally:
    cases: int = 0
    accepted: int = 0
    rejected: int = 0
    crashes: int = 0
    hangs: int = 0
    wrong: int = 0
    seconds: float = 0.0
    errors: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    failures: list = dataclasses.field(default_factory=list)


TALLY = {prop: Tally() for prop in EXAMPLES}


def tally_table():
    rows = [f"fuzz (profile {PROFILE}): cases, accepted, rejected, crashes, hangs, wrong results; "
            "seconds in the worker"]
    total = Tally()
    for prop, t in TALLY.items():
        if not t.cases:
            continue
        rows.append(f"  {prop:16s} {t.cases:7d} {t.accepted:7d} {t.rejected:7d} {t.crashes:4d} "
                    f"{t.hangs:4d} {t.wrong:4d}   {t.seconds:6.1f} s")
        for f in ("cases", "accepted", "rejected", "crashes", "hangs", "wrong", "seconds"):
            setattr(total, f, getattr(total, f) + getattr(t, f))
    rows.append(f"  {'total':16s} {total.cases:7d} {total.accepted:7d} {total.rejected:7d} "
                f"{total.crashes:4d} {total.hangs:4d} {total.wrong:4d}   {total.seconds:6.1f} s")
    return "\n".join(rows)


def write_report():
    if not REPORT:
        return
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        mem = None
    import hypothesis

    out = {
        "profile": PROFILE,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": dict(nproc=os.cpu_count(), memory_bytes=mem, platform=platform.platform(),
                        processor=platform.processor(), python=sys.version.split()[0],
                        numpy=np.__version__, pandas=pd.__version__,
                        hypothesis=hypothesis.__version__),
        "properties": {prop: dict(cases=t.cases, accepted=t.accepted, rejected=t.rejected,
                                  crashes=t.crashes, hangs=t.hangs, wrong=t.wrong,
                                  seconds=round(t.seconds, 1), errors=dict(t.errors),
                                  failures=t.failures[:20])
                       for prop, t in TALLY.items() if t.cases},
    }
    with open(REPORT, "w") as f:
        json.dump(out, f, indent=1)


# ----------------------------------------------------------------------------- the worker
class Pool:
    """One worker process, restarted after a crash or a hang."""

    def __init__(self, models_dir):
        self.models_dir = models_dir
        self.proc = None
        self.start()

    def start(self):
        r_cases, w_cases = os.pipe()
        r_replies, w_replies = os.pipe()
        self.log = tempfile.TemporaryFile()
        env = dict(os.environ)
        import fastsasrec

        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.dirname(os.path.dirname(fastsasrec.__file__)), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "_fuzz_worker.py"), str(r_cases), str(w_replies),
             self.models_dir],
            pass_fds=(r_cases, w_replies), stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=self.log, env=env, cwd=HERE)
        os.close(r_cases)
        os.close(w_replies)
        self.send = Connection(w_cases, readable=False)
        self.recv = Connection(r_replies, writable=False)
        if not self.recv.poll(300):
            raise RuntimeError(f"the fuzz worker did not start:\n{self.stop()}")
        try:
            self.recv.recv()
        except EOFError:
            raise RuntimeError(f"the fuzz worker did not start:\n{self.stop()}") from None

    def stop(self):
        """Ends the worker; returns the tail of what it printed."""
        for c in (self.send, self.recv):
            try:
                c.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.seek(0)
        tail = self.log.read()[-3000:].decode("utf-8", "replace")
        self.log.close()
        return tail

    def run(self, op, case, timeout):
        """The worker's reply, or ("crash", ...) / ("hang", ...) after restarting it."""
        try:
            self.send.send((op, case))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            return self._died()
        if not self.recv.poll(timeout):
            tail = self.stop()
            self.start()
            return ("hang", f"no answer in {timeout:.0f} s\n{tail}")
        try:
            return self.recv.recv()
        except (EOFError, ConnectionResetError):
            return self._died()

    def _died(self):
        self.proc.wait()
        rc = self.proc.returncode
        tail = self.stop()
        self.start()
        return ("crash", f"the worker died (status {rc})\n{tail}")


@pytest.fixture(scope="module")
def pool(tmp_path_factory, request):
    request.config.fastsasrec_fuzz_tally = tally_table
    p = Pool(str(tmp_path_factory.mktemp("fuzz-models")))
    yield p
    p.stop()
    write_report()


def check(prop, op, case):
    """Runs one case in the worker and counts its outcome."""
    t = TALLY[prop]
    t0 = time.perf_counter()
    reply = POOL.run(op, case, TIMEOUT.get(prop, 60.0))
    t.seconds += time.perf_counter() - t0
    t.cases += 1
    kind = reply[0]
    if kind == "accepted":
        t.accepted += 1
        return
    if kind == "rejected":
        t.rejected += 1
        t.errors[reply[1] if reply[1] != "RuntimeError" else f"RuntimeError ({reply[2][:40]})"] += 1
        return
    field = {"crash": "crashes", "hang": "hangs", "wrong": "wrong"}[kind]
    setattr(t, field, getattr(t, field) + 1)
    if len(t.failures) < 50:
        t.failures.append(dict(kind=kind, case=repr(case)[:3000], detail=str(reply[1])[:3000]))
    if FAILFAST:
        raise AssertionError(f"{kind}: {reply[1]}")


def assert_clean(prop):
    t = TALLY[prop]
    print("\n" + tally_table())
    bad = t.crashes + t.hangs + t.wrong
    if bad:
        shown = "\n\n".join(f"[{f['kind']}] case: {f['case']}\n{f['detail']}" for f in t.failures[:5])
        pytest.fail(f"{prop}: {t.crashes} crashes, {t.hangs} hangs, {t.wrong} wrong results in "
                    f"{t.cases} cases; the first:\n\n{shown}", pytrace=False)


POOL = None


@pytest.fixture(autouse=True)
def _bind_pool(pool):
    global POOL
    POOL = pool


# ----------------------------------------------------------------------------- strategies
def mix(*pairs):
    """One of the strategies, each drawn with its weight (st.one_of would merge repeats)."""
    strats = [s for _, s in pairs]
    return st.sampled_from([i for i, (w, _) in enumerate(pairs) for _ in range(w)]).flatmap(
        lambda i: strats[i])


INT64 = st.integers(-2**63, 2**63 - 1)
HUGE = st.one_of(st.integers(min_value=2**63), st.integers(max_value=-2**63 - 1),
                 st.sampled_from([2**63, 2**64, -2**63 - 1, 10**30]))
NP_INTS = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
# Ids holding a control character (NUL, anything below 0x20, DEL) are refused on every path.
NUL_STRINGS = st.sampled_from(["a\x00", "\x00", "\x00a", "b\x00\x00", "日本\x00", "a\x0b", "\n",
                               "x\x1fy", "\x7f"])


def _no_control(s):
    return not any(ord(c) < 0x20 or ord(c) == 0x7F for c in s)


def _np_int_of(v):
    """A numpy integer scalar of v, of a type that holds it."""
    fits = [t for t in NP_INTS if np.iinfo(t).min <= v <= np.iinfo(t).max]
    return st.sampled_from(fits).map(lambda t: t(v))


WEIRD = st.one_of(
    st.none(), st.just(float("nan")), st.floats(), st.booleans(), st.just(np.bool_(True)),
    st.binary(max_size=3), HUGE, st.just(np.uint64(2**63)), st.just(np.uint64(2**64 - 1)),
    st.floats(width=32).map(np.float32), st.just(np.float64(3.0)), st.just(3.0),
    st.complex_numbers(max_magnitude=10), st.just(Fraction(3, 1)), st.just(Decimal(3)),
    st.lists(st.integers(0, 5), max_size=2), st.tuples(), st.dictionaries(st.integers(0, 3), st.integers(0, 3), max_size=1),
    st.just(np.datetime64("2020-01-01")), st.just(np.array(5)), st.just(np.array([1, 2])),
    st.just(bytearray(b"a")), st.just(pd.NA), st.just(pd.NaT), st.just(np.str_("a")),
)


def catalogue(model):
    return W.MODELS[model if model in W.MODELS else "int"][0]


def is_str_model(model):
    return isinstance(catalogue(model)[0], str)


def clean_element(model):
    """An id of the model's kind: mostly known, sometimes unknown, sometimes a numpy scalar."""
    cat = catalogue(model)
    known = st.sampled_from(cat)
    if is_str_model(model):
        unknown = st.one_of(st.text(max_size=4).filter(_no_control),
                            st.sampled_from(["zz", "a ", "A\u0301", "-2", "B"]))
        npy = known.map(np.str_)
    else:
        unknown = st.one_of(INT64, st.sampled_from([-1, 0, 25, 2**63 - 1, -2**63, 2**53, 2**53 + 2]))
        npy = known.flatmap(_np_int_of)
    return mix((6, known), (2, unknown), (1, npy))


def bad_element(model):
    other = st.integers(-5, 30) if is_str_model(model) else st.sampled_from(W.STR_IDS + ["x"])
    reserved = st.just("" if is_str_model(model) else -1)
    return st.one_of(WEIRD, other, NUL_STRINGS, reserved)


def _array(elems, dtype=None):
    """np.array of elems, or an object array when numpy cannot make one of them."""
    try:
        a = np.array(elems, dtype=dtype)
        if a.ndim == 1 and len(elems) == a.size:
            return a
    except (ValueError, TypeError, OverflowError):
        pass
    a = np.empty(len(elems), dtype=object)
    a[:] = list(elems) if elems else []
    return a


def _cast(elems, dtype):
    """elems as an array of dtype (integers wrap around: they are just other ids)."""
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # complex to real, NaN to int: any values will do
            return _array(elems).astype(dtype)
    except (ValueError, TypeError, OverflowError):
        return _array(elems)


SESSION_WRAPS = ["list", "list", "list", "tuple", "array", "int_array", "float_array",
                 "object_array", "series", "set", "dict", "iter", "2d", "str", "none", "int",
                 "bytes", "range"]


def wrap_session(kind, elems, draw):
    """A session of elems as a user may pass it: (recipe, whether it is a plain valid form)."""
    if kind == "list":
        return ("obj", list(elems)), True
    if kind == "tuple":
        return ("obj", tuple(elems)), True
    if kind == "array":
        return ("obj", _array(elems)), False
    if kind == "int_array":
        return ("obj", _cast(elems, draw(st.sampled_from(NP_INTS)))), False
    if kind == "float_array":
        return ("obj", _cast(elems, draw(st.sampled_from([np.float32, np.float64])))), False
    if kind == "object_array":
        return ("obj", _array(elems, object)), False
    if kind == "series":
        try:
            return ("obj", pd.Series(list(elems))), False
        except (ValueError, TypeError):  # pragma: no cover
            return ("obj", list(elems)), False
    if kind == "set":
        try:
            return ("obj", set(elems)), False
        except TypeError:
            return ("obj", list(elems)), False
    if kind == "dict":
        try:
            return ("obj", dict.fromkeys(elems)), False
        except TypeError:
            return ("obj", list(elems)), False
    if kind == "iter":
        return ("iter", list(elems)), False
    if kind == "2d":
        return ("obj", _array([list(elems), list(elems)]) if elems else np.zeros((2, 0), np.int64)), False
    if kind == "str":
        return ("obj", "".join(map(str, elems)) or "abc"), False
    if kind == "none":
        return ("obj", None), False
    if kind == "int":
        return ("obj", draw(st.integers(-3, 30))), False
    if kind == "bytes":
        return ("obj", b"\x01\x02"), False
    if kind == "range":
        return ("obj", range(draw(st.integers(-2, 5)), draw(st.integers(0, 30)))), False
    raise AssertionError(kind)


@st.composite
def session_elems(draw, model, clean):
    elems = draw(st.lists(clean_element(model), max_size=8))
    if not clean:
        for _ in range(draw(st.integers(1, 2))):
            elems.insert(draw(st.integers(0, len(elems))), draw(bad_element(model)))
    return elems


@st.composite
def one_session(draw, model, clean):
    """(recipe, plain): a session; plain when it is a list or tuple of valid ids."""
    elems = draw(session_elems(model, clean))
    kind = draw(st.sampled_from(["list", "list", "tuple"] if clean else SESSION_WRAPS))
    recipe, plain = wrap_session(kind, elems, draw)
    return recipe, plain and clean


BATCH_WRAPS = ["lists", "lists", "lists", "mixed", "tuple", "dict", "array2d", "object1d",
               "series", "sequences", "bad_sequences", "iter", "map", "junk"]


def _offsets(draw, lengths):
    return np.concatenate(([0], np.cumsum(lengths))).astype(
        draw(st.sampled_from([np.int64, np.int64, np.longlong, np.int32, np.uint8, np.uint64])))


@st.composite
def batch(draw, model, clean_only=False):
    """(recipe, plain): the sessions of a batch call; plain when the form and every id are
    valid (the call must then be accepted)."""
    clean = clean_only or draw(st.booleans())
    n = draw(mix((12, st.integers(0, 6)), (1, st.integers(7, 64))))  # a few batches the threads split
    sessions = [draw(session_elems(model, clean=True)) for _ in range(n)]
    if not clean and sessions:
        i = draw(st.integers(0, n - 1))
        sessions[i] = draw(session_elems(model, clean=False))
    kind = draw(st.sampled_from(["lists", "array2d", "sequences", "series"] if clean_only else BATCH_WRAPS))
    if kind == "lists":
        return ("obj", sessions), clean
    if kind == "mixed":  # each session in a form of its own
        wraps = draw(st.lists(st.sampled_from(["list", "tuple", "array", "int_array", "series", "set"]),
                              min_size=len(sessions), max_size=len(sessions)))
        return ("obj", [wrap_session(k, s, draw)[0][1] for k, s in zip(wraps, sessions)]), False
    if kind == "tuple":
        return ("obj", tuple(sessions)), False
    if kind == "dict":
        return ("obj", {f"user{i}": s for i, s in enumerate(sessions)}), False
    if kind == "array2d":
        L = draw(st.integers(0, 6))
        rows = [(s * (L // max(len(s), 1) + 1))[:L] if s else list(catalogue(model)[:1] * L) for s in sessions]
        if not rows:
            return ("obj", np.zeros((0, L), dtype=np.int64)), clean
        if clean and not is_str_model(model):
            return ("obj", np.array(rows, dtype=np.int64)), True
        dtype = draw(st.sampled_from(NP_INTS + [np.float64, object, None, np.bool_]))
        try:
            a = np.array(rows, dtype=dtype)
        except (ValueError, TypeError, OverflowError):
            a = np.array(rows, dtype=object)
        return ("obj", a), clean and a.dtype.kind in ("U",) and is_str_model(model)
    if kind == "object1d":
        a = np.empty(len(sessions), dtype=object)
        for i, s in enumerate(sessions):
            a[i] = s
        return ("obj", a), False
    if kind == "series":
        return ("series", sessions), clean
    if kind in ("sequences", "bad_sequences"):
        flat = [x for s in sessions for x in s]
        lengths = [len(s) for s in sessions]
        if is_str_model(model) or any(isinstance(x, str) for x in flat):
            items = _array(flat) if flat else np.zeros(0, dtype=str)
        else:
            items = _cast(flat, draw(st.sampled_from([np.int64, np.int64, np.uint64, np.int32])))
        ok_items = clean and (items.dtype == np.int64 or items.dtype.kind == "U" or not flat)
        if kind == "sequences":
            return ("seq", items, _offsets(draw, lengths)), ok_items
        offs = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        how = draw(st.sampled_from(["start", "decrease", "end", "float", "2d", "empty", "list",
                                    "negative", "huge", "items2d", "items_list"]))
        if how == "start":
            offs = offs + draw(st.integers(1, 3))
        elif how == "decrease" and offs.size > 2:
            offs = offs.copy()
            offs[1] = offs[-1] + 1
        elif how == "end":
            offs = np.append(offs, offs[-1] + draw(st.integers(1, 3)))
        elif how == "float":
            offs = offs.astype(np.float64)
        elif how == "2d":
            offs = offs.reshape(1, -1)
        elif how == "empty":
            offs = np.zeros(0, dtype=np.int64)
        elif how == "list":
            return ("seq", list(flat), offs.tolist()), False
        elif how == "negative":
            offs = offs - 1
        elif how == "huge":
            offs = offs.astype(np.uint64) + np.uint64(2**63)
        elif how == "items2d":
            items = items.reshape(1, -1)
        elif how == "items_list":
            items = list(flat)
        return ("seq", items, offs), False
    if kind == "iter":
        return ("iter", sessions), False
    if kind == "map":
        return ("map", sessions), False
    junk = draw(st.sampled_from([None, "abc", b"ab", 5, 3.5, [], [[]], [[], []], np.array([1, 2, 3]),
                                 np.zeros((2, 2, 2), np.int64), np.array([], dtype=np.int64),
                                 (np.array([1, 2, 3]), np.array([0, 1, 3])), [None], ["ab"], [5],
                                 {}, [np.array(3)], np.array([[1.5]])]))
    plain = isinstance(junk, list) and all(isinstance(x, list) and not x for x in junk)
    return ("obj", junk), plain


GOOD_N = st.integers(1, 30)
BAD_N = st.one_of(st.just(0), st.integers(max_value=-1), st.integers(min_value=2**31), HUGE,
                  st.booleans(), st.floats(), st.just(2.0), st.just(np.float64(3.0)), st.none(),
                  st.just("3"), st.just(np.uint64(2**64 - 1)), st.just(np.int8(-1)),
                  st.just(np.array(3)), st.just([3]))
N = mix((12, GOOD_N), (1, GOOD_N.flatmap(_np_int_of)), (2, BAD_N))


def n_is_valid(n):
    return (not isinstance(n, (bool, np.bool_)) and isinstance(n, (int, np.integer)) and n >= 1)


EXCLUDE_SEEN = mix((12, st.booleans()),
                   (1, st.sampled_from([0, 1, None, np.bool_(False), "no", np.array([1, 2])])))
MODEL = st.sampled_from(W.MODEL_NAMES)
FITTED_MODEL = st.sampled_from(W.FITTED)


@st.composite
def batch_cases(draw):
    model = draw(mix((12, FITTED_MODEL), (1, MODEL)))
    recipe, plain = draw(batch(model))
    n = draw(N)
    exclude_seen = draw(EXCLUDE_SEEN)
    must = (plain and model != "unfitted" and n_is_valid(n) and isinstance(exclude_seen, bool))
    return dict(model=model, sessions=recipe, n=n, exclude_seen=exclude_seen, must_accept=must)


@st.composite
def recommend_cases(draw):
    model = draw(mix((12, FITTED_MODEL), (1, MODEL)))
    clean = draw(st.booleans())
    session, plain = draw(one_session(model, clean))
    exclude, plain_ex = None, True
    if draw(st.booleans()):
        exclude, plain_ex = draw(one_session(model, draw(st.booleans())))
    n = draw(N)
    exclude_seen = draw(EXCLUDE_SEEN)
    must = (plain and plain_ex and model != "unfitted" and n_is_valid(n)
            and isinstance(exclude_seen, bool))
    return dict(model=model, session=session, n=n, exclude_seen=exclude_seen, exclude=exclude,
                must_accept=must)


# ---- hyper-parameters
INVALID_INT = st.one_of(st.integers(max_value=0), st.integers(min_value=2**31), HUGE, st.booleans(),
                        st.floats(), st.just("8"), st.none(), st.just(8.0), st.just([8]))
INVALID_FLOAT = st.one_of(st.just(float("nan")), st.just(float("inf")), st.just(-float("inf")),
                          st.floats(max_value=-1e-9), st.floats(min_value=1.0), st.booleans(),
                          st.just("0.1"), st.none(), st.just(complex(1, 1)), st.just(10**400))


def valid_params(draw):
    factors = draw(st.sampled_from([4, 8, 8, 16]))
    return dict(
        factors=factors,
        n_layers=draw(st.integers(0, 2)),
        n_heads=draw(st.sampled_from([h for h in (1, 2, 4) if factors % h == 0])),
        max_seq=draw(st.integers(1, 6)),
        dropout=draw(st.floats(0.0, 0.5)),
        loss=draw(st.sampled_from(["softmax", "auto"])),  # the sampled losses need more items
        negatives=draw(st.sampled_from(["auto", "uniform", "popularity", "in_batch", "mixed"])),
        logq_correction=draw(st.sampled_from([None, True, False])),
        n_negatives=draw(st.integers(1, 3)),
        gbce_t=draw(st.floats(0.0, 1.0)),
        learning_rate=draw(st.floats(1e-4, 0.1)),
        weight_decay=draw(st.floats(0.0, 0.1)),
        batch_size=draw(st.integers(1, 16)),
        iterations=draw(st.integers(0, 2)),
        device="cpu",
        random_state=draw(st.one_of(st.none(), st.integers(0, 2**63 - 1))),
        verbose=0,
        num_threads=draw(st.integers(0, 2)),
        precision=draw(st.sampled_from(["fp32", "bf16"])),
    )


# Values a parameter may get in a "dirty" case: valid ones of other sizes and invalid ones
# (never a valid iterations beyond 2 or a valid width whose fit would take minutes).
DIRTY = {
    "factors": st.one_of(st.sampled_from([1, 2, 3, 6, 12, 2**26, 2**30, 2**31 - 1]), INVALID_INT),
    "n_layers": st.one_of(st.sampled_from([0, 3, 300, 301]), INVALID_INT),
    "n_heads": st.one_of(st.integers(1, 9), INVALID_INT),
    "max_seq": st.one_of(st.sampled_from([1, 2, 65536, 65537, "auto", "Auto"]), INVALID_INT),
    "dropout": st.one_of(st.floats(0, 0.999), st.sampled_from(["auto", "AUTO", " auto"]), INVALID_FLOAT),
    "loss": st.one_of(st.sampled_from(["bce", "sampled_softmax", "gbce", "Softmax", "", "mse"]), st.none(),
                      st.just(1)),
    "negatives": st.one_of(st.sampled_from(["auto", "uniform", "mixed", "in-batch", "Popularity", ""]),
                           st.none(), st.just(0)),
    "logq_correction": st.sampled_from([None, True, False, 0, 1, 2, "yes", np.bool_(True)]),
    "gbce_t": st.one_of(st.sampled_from([0.0, 1.0, -0.01, 1.01]), INVALID_FLOAT),
    "n_negatives": st.one_of(st.integers(1, 40), st.just(2**31 - 1), INVALID_INT),
    "learning_rate": st.one_of(st.sampled_from([1e-30, 10.0, 1e6, 1e30, 3e38]), INVALID_FLOAT),
    "weight_decay": st.one_of(st.sampled_from([0.0, 1.0, 1e30]), INVALID_FLOAT),
    "batch_size": st.one_of(st.sampled_from([1, 2**31 - 1]), INVALID_INT),
    "iterations": st.one_of(st.sampled_from([0, 1, 2, -1, 2.0, True, None, "1", "auto", "Auto"])),
    "device": st.sampled_from(["auto", "cuda", "gpu", "CPU", None, 0, "cpu:0"]),
    "random_state": st.one_of(st.sampled_from([-1, 2**63, 2**64, 1.5, True, "1", np.int64(3), np.uint64(2**63 - 1)])),
    "verbose": st.sampled_from([0, -1, 1.0, None, True]),
    "num_threads": st.one_of(st.sampled_from([0, 1, 2, 3, 64, -1, 2**31, 2**63]), INVALID_INT),
    "precision": st.sampled_from(["fp16", "BF16", None, 16, "fp32", "bf16"]),
}


@st.composite
def params_dict(draw, clean):
    p = valid_params(draw)
    if clean:
        keep = draw(st.sets(st.sampled_from(sorted(p))))
        return {k: v for k, v in p.items() if k in keep}, True
    for k in sorted(draw(st.sets(st.sampled_from(sorted(DIRTY)), min_size=1, max_size=3))):
        p[k] = draw(DIRTY[k])
    if draw(st.integers(0, 9)) == 0:
        p[draw(st.sampled_from(["alpha", "Factors", "seed", ""]))] = 1
    return p, False


@st.composite
def params_cases(draw):
    init, ok1 = draw(params_dict(draw(st.booleans())))
    upd, ok2 = (None, True) if draw(st.booleans()) else draw(params_dict(draw(st.booleans())))
    if upd is not None and ok1 and ok2:
        merged = dict(W.MODELS["int"][1], factors=64, n_heads=1)  # the defaults' factors, heads
        merged.update(init)
        merged.update(upd)
        ok2 = merged["factors"] % merged.get("n_heads", 1) == 0
    return dict(init=init, set=upd, must_accept=ok1 and ok2)


# ---- fit
FIT_INTS = [0, 1, 2, 3, 5, 8, 13, -5, 2**40, 2**53 + 1, 2**63 - 1, -2**63]
FIT_STRS = ["a", "b", "c", "é", " ", "long" * 5, "-1", "0"]


@st.composite
def fit_cases(draw):
    clean = draw(st.booleans())
    strs = draw(st.booleans())
    pool = st.sampled_from(FIT_STRS if strs else FIT_INTS)
    if not clean:
        pool = mix((6, pool), (1, pool.flatmap(lambda v: _np_int_of(v) if isinstance(v, int) else st.just(np.str_(v)))))
    seqs = draw(st.lists(st.lists(pool, max_size=7), min_size=0 if not clean else 1, max_size=10))
    if clean:
        seqs.append(draw(st.lists(pool, min_size=2, max_size=7)))
    model = "str" if strs else "int"
    if clean:
        recipe, plain = ("obj", seqs), True
        params = valid_params(draw)
    else:
        sub = draw(batch(model))[0] if draw(st.integers(0, 3)) == 0 else None
        if sub is not None:
            recipe = sub
        else:
            if seqs and draw(st.booleans()):
                i = draw(st.integers(0, len(seqs) - 1))
                seqs[i] = seqs[i] + [draw(bad_element(model))]
            recipe = draw(st.sampled_from([("obj", seqs), ("series", seqs), ("iter", seqs)]))
        params = valid_params(draw)
        if draw(st.booleans()):
            for k in sorted(draw(st.sets(st.sampled_from(sorted(DIRTY)), min_size=1, max_size=2))):
                params[k] = draw(DIRTY[k])
    fit_kw = {}
    if draw(st.integers(0, 4)) == 0:
        fit_kw["validation"] = ("obj", [s for s in seqs if len(s) >= 2][:3] or [[]])
        if draw(st.booleans()):
            fit_kw["early_stopping_patience"] = draw(st.one_of(st.integers(-1, 3), st.just(1.5), st.none()))
    if draw(st.integers(0, 9)) == 0:
        fit_kw["callbacks"] = draw(st.sampled_from([[], [None], [1], "cb"]))
    must = clean and not fit_kw
    return dict(sequences=recipe, params=params, fit_kw=fit_kw, must_accept=must)


# ---- load
TOP_KEYS = ["format", "format_version", "library_version", "params", "n_items", "engine_config",
            "tensors", "item_id_kind", "loss_history", "sha256"]
CONFIG_KEYS = ["n_items", "factors", "ffn_factors", "n_heads", "n_layers", "max_seq", "n_negatives",
               "batch_size", "dropout", "learning_rate", "weight_decay", "beta1", "beta2",
               "adam_eps", "ln_eps", "loss", "precision", "seed"]
HEADER_PATHS = ([(k,) for k in TOP_KEYS] + [("params", k) for k in sorted(DIRTY)]
                + [("engine_config", k) for k in CONFIG_KEYS]
                + [("tensors", i) for i in range(3)] + [("tensors", i, j) for i in range(14) for j in range(3)]
                + [("tensors", i, 2, 0) for i in range(14)]
                + [("sha256", m) for m in ("params.npy", "item_ids.npy", "popularity.npy")]
                + [("loss_history", 0)])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
    | st.sampled_from(["fastsasrec", "softmax", "bce", "bf16", "str", "int", "params", 1, 2, 0, -1, 2**31, 2**64]),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=5)
MEMBERS = ["params.npy", "item_ids.npy", "popularity.npy", "fastsasrec.json"]
TRANSFORMS = st.one_of(
    st.tuples(st.just("astype"), st.sampled_from(["<f4", ">f4", "<f8", "<f2", "<i8", ">i8", "<i4", "<u8",
                                                   "<U3", "<U1", "|S3", "|b1", "<c8", "<M8[s]"])),
    st.tuples(st.just("set"), st.integers(0, 2**20), st.one_of(
        st.floats(), st.integers(-2**63, 2**63 - 1), st.sampled_from([-1, "", "a\x00", "\x00"]))),
    st.tuples(st.sampled_from(["reverse", "repeat_first", "drop_last", "append", "big_endian", "2d",
                               "empty", "fortran", "zeros", "huge_popularity"])),
)


@st.composite
def load_cases(draw):
    model = draw(st.sampled_from(sorted(W.MODELS)))
    kind = draw(st.sampled_from(["raw", "truncate", "flip", "flip", "splice", "header", "header",
                                 "header", "member", "member", "rezip", "drop_member",
                                 "extra_member"]))
    case = dict(model=model, kind=kind, device="cpu", num_threads=None)
    if kind == "raw":
        case["bytes"] = draw(st.one_of(st.binary(max_size=64), st.just(b""),
                                       st.binary(max_size=32).map(lambda b: b"PK\x03\x04" + b),
                                       st.just(b"PK\x05\x06" + b"\x00" * 18)))
    elif kind == "truncate":
        case["at"] = draw(st.integers(0, 2**20))
    elif kind == "flip":
        case["flips"] = draw(st.lists(st.tuples(st.integers(0, 2**20), st.integers(1, 255)),
                                      min_size=1, max_size=4))
    elif kind == "splice":
        case.update(at=draw(st.integers(0, 2**20)), drop=draw(st.integers(0, 8)),
                    bytes=draw(st.binary(max_size=8)))
    elif kind == "header":
        action = draw(st.sampled_from(["set", "set", "delete", "nudge", "add"]))
        value = draw(JSON) if action in ("set", "add") else draw(st.sampled_from([-2, -1, 1, 2, 7]))
        case.update(path=draw(st.sampled_from(HEADER_PATHS)), action=action, value=value)
    elif kind == "member":
        member = draw(st.sampled_from(MEMBERS))
        content = draw(st.one_of(
            st.binary(max_size=40), st.just(("pickle",)),
            st.sampled_from(sorted(W.MODELS)).map(lambda m: ("other", m)))) if draw(st.integers(0, 2)) == 0 \
            else ("transform",) + draw(TRANSFORMS)
        case.update(member=member, content=content)
        how = draw(st.sampled_from(["", "update_sha", "update_sha", "drop_sha"]))
        if how:
            case[how] = True
    elif kind == "rezip":
        case["compression"] = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED,
                                                    zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
        case["order"] = draw(st.integers(0, 5))
    elif kind == "drop_member":
        case["member"] = draw(st.sampled_from(MEMBERS))
    elif kind == "extra_member":
        case.update(member=draw(st.sampled_from(["extra.npy", "../evil", "/abs", "params.npy/", "a" * 300])),
                    bytes=draw(st.binary(max_size=16)))
    if kind in ("rezip", "header", "member") and draw(st.integers(0, 4)) == 0:
        case["duplicate"] = draw(st.sampled_from(MEMBERS))
    if draw(st.integers(0, 3)) == 0:
        case["device"] = draw(st.sampled_from(["auto", "cuda", "gpu", None, 0, "cpu"]))
    if draw(st.booleans()):
        case["num_threads"] = draw(st.one_of(st.integers(0, 3), st.sampled_from([-1, 2**31, 2**63, 1.5, True, "2"])))
    nt = case["num_threads"]
    case["must_accept"] = (kind == "rezip" and "duplicate" not in case and case["device"] == "cpu"
                           and (nt is None or (type(nt) is int and 0 <= nt < 2**31)))
    return case


# ---- evaluate
@st.composite
def evaluate_cases(draw):
    model = draw(mix((12, FITTED_MODEL), (1, MODEL)))
    recipe, plain = draw(batch(model))
    k = draw(N)
    protocol = draw(mix((12, st.sampled_from(["loo", "loo", "sampled"])),
                        (1, st.sampled_from(["LOO", None, 1, "", "sampled "]))))
    n_neg = draw(mix((8, st.integers(1, 12)), (1, BAD_N)))
    seed = draw(mix((8, st.integers(0, 2**32)), (1, st.sampled_from([None, -1, 1.5, 2**70, "0"]))))
    seqs = view_of_plain(recipe) if plain else None
    must = (plain and model != "unfitted" and n_is_valid(k) and protocol == "loo"
            and seqs is not None and any(len(s) >= 2 for s in seqs))
    return dict(model=model, sequences=recipe, k=k, protocol=protocol, n_negatives=n_neg,
                random_state=seed, must_accept=must)


def view_of_plain(recipe):
    if recipe[0] in ("obj", "series", "iter", "map") and isinstance(recipe[1], list):
        return recipe[1]
    if recipe[0] == "obj" and isinstance(recipe[1], np.ndarray):
        return list(recipe[1])
    if recipe[0] == "seq":
        o = np.asarray(recipe[2]).tolist()
        return [recipe[1][a:b] for a, b in zip(o, o[1:])]
    return None


# ---- Sequences
@st.composite
def sequences_cases(draw):
    model = draw(st.sampled_from(["int", "sparse", "str"]))
    elems = draw(session_elems(model, clean=draw(st.booleans())))
    how = draw(st.sampled_from(["list", "array", "int_array", "float_array", "object_array", "2d", "tuple"]))
    items = wrap_session(how, elems, draw)[0][1]
    cuts = sorted(draw(st.lists(st.integers(0, len(elems)), max_size=4)))
    offsets = [0] + cuts + [len(elems)]
    form = draw(st.sampled_from(["list", "int64", "int32", "uint64", "float", "bad", "bad"]))
    if form == "int64":
        offsets = np.array(offsets, dtype=np.int64)
    elif form == "int32":
        offsets = np.array(offsets, dtype=np.int32)
    elif form == "uint64":
        offsets = np.array(offsets, dtype=np.uint64)
    elif form == "float":
        offsets = np.array(offsets, dtype=np.float64)
    elif form == "bad":
        offsets = draw(st.one_of(
            st.lists(st.integers(-3, 12), max_size=5),
            st.just([[0, len(elems)]]), st.just(None), st.just("0,1"), st.just(0),
            st.just(np.array([0, 2**63], dtype=np.uint64)), st.just([0, True]),
            st.just([0, 2**64]), st.just(np.array([0.0, float("nan")]))))
    return dict(items=items, offsets=offsets)


# ----------------------------------------------------------------------------- properties
def test_recommend_batch(pool):
    """recommend_batch on whatever sessions, n and exclude_seen: a (B, min(n, V)) result whose
    rows are right (checked against the embeddings, exclusions and popularity), and equal
    to recommend() of each session; or an allowed error."""
    @fuzz_settings("recommend_batch")
    @given(batch_cases())
    @example(dict(model="sparse", sessions=("obj", [[np.uint64(2**53 + 1), np.int64(3)]]), n=3,
                  exclude_seen=True, must_accept=True))
    @example(dict(model="str", sessions=("obj", [["a\x00", "b"]]), n=5, exclude_seen=True,
                  must_accept=False))
    @example(dict(model="int", sessions=("obj", np.array([[1, 2], [3, 4]], dtype=np.uint64)), n=2**64,
                  exclude_seen=False, must_accept=True))
    @example(dict(model="str", sessions=("seq", np.array(["A", "z", "A", "z"]), np.array([0, 4])),
                  n=5, exclude_seen=False, must_accept=True))  # the offsets arrive unpickled
    @example(dict(model="int", sessions=("seq", np.array([1, 2, 3]), np.array([0, 1, 3], np.longlong)),
                  n=3, exclude_seen=True, must_accept=True))
    def run(case):
        check("recommend_batch", "recommend_batch", case)

    run()
    assert_clean("recommend_batch")


def test_the_harness_sees_crashes_and_hangs(pool):
    """A case that kills the worker is a crash and one it does not answer a hang; either
    way the worker is restarted and answers the next case."""
    assert pool.run("selftest", "abort", 60)[0] == "crash"
    assert pool.run("selftest", "segfault", 60)[0] == "crash"
    assert pool.run("selftest", "sleep", 1)[0] == "hang"
    assert pool.run("selftest", "ok", 60) == ("accepted", "")


def test_recommend(pool):
    """recommend on whatever session, n, exclude_seen and exclude: ids of the catalogue, no
    excluded one, scores sorted and right; or an allowed error."""
    @fuzz_settings("recommend")
    @given(recommend_cases())
    def run(case):
        check("recommend", "recommend", case)

    run()
    assert_clean("recommend")


def test_fit(pool):
    """fit on whatever sequences and hyper-parameters: a model whose catalogue and popularity
    are those of its sequences and whose recommendations are right; or an allowed error."""
    @fuzz_settings("fit")
    @given(fit_cases())
    def run(case):
        check("fit", "fit", case)

    run()
    assert_clean("fit")


def test_load(pool):
    """load of damaged, edited and hostile model files: a ValueError, or a model that has
    exactly the saved arrays (when the damage left them alone) and answers right; never an
    object unpickled from the file."""
    @fuzz_settings("load")
    @given(load_cases())
    @example(dict(model="int", kind="member", member="item_ids.npy", content=("pickle",),
                  update_sha=True, device="cpu", num_threads=None, must_accept=False))
    @example(dict(model="int", kind="member", member="popularity.npy",
                  content=("transform", "huge_popularity"), update_sha=True, device="cpu",
                  num_threads=None, must_accept=False))
    def run(case):
        check("load", "load", case)

    run()
    assert_clean("load")


def test_evaluate(pool):
    """evaluate on whatever sequences, k, protocol, n_negatives and seed: metrics in [0, 1]
    (HR@k equal to recommend()'s hits for leave-one-out); or an allowed error."""
    @fuzz_settings("evaluate")
    @given(evaluate_cases())
    def run(case):
        check("evaluate", "evaluate", case)

    run()
    assert_clean("evaluate")


def test_params(pool):
    """SASRec(**params) and set_params(**params): every parameter of its type and as given,
    or an allowed error."""
    @fuzz_settings("params")
    @given(params_cases())
    def run(case):
        check("params", "params", case)

    run()
    assert_clean("params")


def test_sequences(pool):
    """Sequences(items, offsets): reads back as the cut it describes (and survives pickling),
    or an allowed error."""
    @fuzz_settings("sequences")
    @given(sequences_cases())
    def run(case):
        check("sequences", "sequences", case)

    run()
    assert_clean("sequences")
