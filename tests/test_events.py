"""The one event reader, seen from the command line: CSV ids as text (no type guessed per
chunk), item ids integer only when canonical, users written as they were read; outputs
that would overwrite an input refused before any work; --epochs 0 refused; the seen flags."""
import os

import numpy as np
import pandas as pd
import pytest

import fastsasrec
from fastsasrec import SASRec
from fastsasrec.cli import main

from test_cli import run

pq = pytest.importorskip("pyarrow.parquet")
FAST = ["--epochs", "1", "--factors", "8", "--max-seq", "5", "--threads", "1"]


def _csv(path, rows, header="user_id,item_id,timestamp"):
    path.write_text(header + "\n" + "\n".join(",".join(str(x) for x in r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def int_model(tmp_path_factory):
    """An integer-id model file written by the Python API (items 1..30)."""
    rng = np.random.default_rng(0)
    seqs = [[int(x) for x in rng.integers(1, 31, size=8)] for _ in range(60)]
    path = tmp_path_factory.mktemp("ev") / "int.fsr"
    SASRec(factors=8, max_seq=5, iterations=1, num_threads=1, random_state=0).fit(seqs).save(path)
    return str(path)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A string-id model whose ids are "1".."30" (and "sku-x"): they look like numbers."""
    rng = np.random.default_rng(1)
    seqs = [[str(x) for x in rng.integers(1, 31, size=8)] + ["sku-x"] for _ in range(60)]
    path = tmp_path_factory.mktemp("ev") / "text.fsr"
    SASRec(factors=8, max_seq=5, iterations=1, num_threads=1, random_state=0).fit(seqs).save(path)
    return str(path)


def _recs(path):
    return pd.read_csv(path, dtype={"user_id": str}, keep_default_na=False)


def test_a_user_column_mixing_numbers_and_text_is_one_user_whatever_the_chunks(int_model, tmp_path, capsys):
    """User 5 was read as a number in one chunk and as text in another: two lists for one
    user, and an output that changed with --chunk-rows."""
    rows = [("5", 1, 1), ("5", 2, 2), ("5", 3, 3), ("vip-1", 4, 4), ("5", 5, 5), ("007", 6, 6),
            ("7", 7, 7), ("NA", 8, 8), ("null", 9, 9)]
    events = _csv(tmp_path / "ev.csv", rows)
    outs = []
    for chunk in ("2", "3", "1000"):
        out = tmp_path / f"recs{chunk}.csv"
        code, _, err = run(capsys, ["score", int_model, events, "-o", out, "-n", "3", "--chunk-rows", chunk])
        assert code == 0, err
        outs.append(_recs(out))
    for o in outs[1:]:
        pd.testing.assert_frame_equal(o, outs[0])
    got = outs[0]
    assert sorted(set(got["user_id"])) == ["007", "5", "7", "NA", "null", "vip-1"]  # "007" is not "7"
    assert got.groupby("user_id").size().eq(3).all()
    m = SASRec.load(int_model, device="cpu")
    want = m.recommend([1, 2, 3, 5], n=3)[0].tolist()
    assert got.loc[got["user_id"] == "5", "item"].tolist() == want


def test_train_makes_items_integers_only_when_every_value_is_canonical(tmp_path, capsys):
    base = [(f"u{u}", 10 + (u + k) % 7, k) for u in range(12) for k in range(5)]
    for items, kind in ((lambda x: str(x), "i"), (lambda x: "0" if x == 10 else str(x), "i"),
                        (lambda x: "007" if x == 10 else str(x), "U"), (lambda x: f"+{x}", "U"),
                        (lambda x: "-1" if x == 10 else str(x), "U")):
        events = _csv(tmp_path / "ev.csv", [(u, items(i), t) for u, i, t in base])
        code, _, err = run(capsys, ["train", events, "-o", tmp_path / "m.fsr"] + FAST)
        assert code == 0, err
        ids = SASRec.load(tmp_path / "m.fsr", device="cpu").item_ids
        assert ids.dtype.kind == kind, (items(10), ids)
        if kind == "U":
            assert items(10) in ids.tolist()  # kept as written: "007" is not 7


@pytest.mark.parametrize("bad", ["007", "+7", " 7", "7.0", "abc"])
def test_an_integer_id_model_refuses_non_canonical_item_text(int_model, tmp_path, capsys, bad):
    events = _csv(tmp_path / "ev.csv", [("a", 1, 1), ("a", 2, 2), ("b", f'"{bad}"', 3)])
    for argv in (["score", int_model, events, "-o", tmp_path / "r.csv"],
                 ["evaluate", int_model, events],
                 ["update", int_model, events, "-o", tmp_path / "u.fsr", "--threads", "1"]):
        code, _, err = run(capsys, argv)
        assert code == 2 and repr(bad) in err and "at row 2" in err and "Traceback" not in err, err
    assert not os.path.exists(tmp_path / "r.csv") and not os.path.exists(tmp_path / "u.fsr")


def test_integer_id_model_files_keep_working_with_score_and_update(int_model, tmp_path, capsys):
    events = _csv(tmp_path / "ev.csv", [("a", 1, 1), ("a", 2, 2), ("b", 0, 3), ("b", 31, 4)])
    code, _, err = run(capsys, ["score", int_model, events, "-o", tmp_path / "r.parquet", "-n", "2"])
    assert code == 0, err
    assert pq.read_table(tmp_path / "r.parquet").column("item").type == "int64"
    code, _, err = run(capsys, ["update", int_model, events, "-o", tmp_path / "u.fsr", "--threads", "1"])
    assert code == 0, err
    assert {0, 31} <= set(SASRec.load(tmp_path / "u.fsr", device="cpu").item_ids.tolist())


def test_a_text_id_model_takes_chunks_whose_ids_all_look_numeric(text_model, tmp_path, capsys):
    """It refused them: "items mixes integers and strings", or a model of strings given ints."""
    rows = [("a", 1, 1), ("a", 2, 2), ("b", 3, 3), ("b", "sku-x", 4), ("c", "007", 5)]
    events = _csv(tmp_path / "ev.csv", rows)
    out = tmp_path / "r.parquet"
    code, _, err = run(capsys, ["score", text_model, events, "-o", out, "-n", "2", "--chunk-rows", "2"])
    assert code == 0, err
    got = pq.read_table(out).to_pandas()
    m = SASRec.load(text_model, device="cpu")
    assert got.loc[got["user_id"] == "a", "item"].tolist() == m.recommend(["1", "2"], n=2)[0].tolist()
    code, _, err = run(capsys, ["evaluate", text_model, events])
    assert code == 0, err


def test_an_empty_cell_is_a_missing_value_and_control_characters_are_refused(int_model, tmp_path, capsys):
    events = _csv(tmp_path / "ev.csv", [("a", 1, 1), ("", 2, 2)])
    code, _, err = run(capsys, ["score", int_model, events, "-o", tmp_path / "r.csv"])
    assert code == 2 and "column 'user_id'" in err and "missing value at row 1" in err
    events = _csv(tmp_path / "ev.csv", [("a", 1, 1), ('"b\tc"', 2, 2)])
    for argv in (["score", int_model, events, "-o", tmp_path / "r.csv"], ["train", events, "-o", tmp_path / "m.fsr"]):
        code, _, err = run(capsys, argv)
        assert code == 2 and "'b\\tc'" in err and "control characters" in err, err


def test_sorted_by_user_with_text_ids_out_of_order_is_a_clear_error(int_model, tmp_path, capsys):
    """It was an AttributeError traceback (a str has no .item()), exit 1."""
    events = _csv(tmp_path / "ev.csv", [("b", 1, 1), ("b", 2, 2), ("c", 3, 3), ("a", 4, 4)])
    code, _, err = run(capsys, ["score", int_model, events, "-o", tmp_path / "r.csv", "--sorted-by-user"])
    assert code == 2 and "user 'a' at row 3 comes after user 'c'" in err and "Traceback" not in err
    # a file sorted by a numeric user column (2 before 10) is in order, as is one sorted as text
    for users in (["2", "2", "10", "10"], ["10", "10", "2", "2"]):
        events = _csv(tmp_path / "ev.csv", [(u, i + 1, i) for i, u in enumerate(users)])
        code, _, err = run(capsys, ["score", int_model, events, "-o", tmp_path / "r.csv", "--sorted-by-user"])
        assert code == 0, err
    events = _csv(tmp_path / "ev.csv", [("2", 1, 1), ("10", 2, 2), ("3", 3, 3)])  # neither order
    code, _, err = run(capsys, ["score", int_model, events, "-o", tmp_path / "r.csv", "--sorted-by-user"])
    assert code == 2 and "user '3' at row 2" in err


# ----------------------------------------------------------------------------- outputs
@pytest.fixture
def events_file(tmp_path):
    rows = [(f"u{u}", 1 + (u + k) % 9, k) for u in range(10) for k in range(4)]
    return _csv(tmp_path / "ev.csv", rows)


def test_an_output_that_is_an_input_is_refused_before_any_work(events_file, int_model, tmp_path, capsys,
                                                              monkeypatch):
    """They replaced the event log (atomically) and exited 0, through a symlink too."""
    calls = []
    monkeypatch.setattr(SASRec, "fit", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(SASRec, "partial_fit", lambda *a, **k: calls.append(1))
    link = tmp_path / "link.csv"
    link.symlink_to(events_file)
    model = tmp_path / "m.fsr"
    model.write_bytes(open(int_model, "rb").read())
    before = events_file.read_bytes(), model.read_bytes()
    cases = [(["train", events_file, "-o", events_file], "-o/--output"),
             (["train", events_file, "-o", link], "-o/--output"),
             (["train", link, "-o", events_file], "-o/--output"),
             (["train", events_file, "-o", tmp_path / "x.fsr", "--checkpoint", events_file], "--checkpoint"),
             (["train", events_file, "-o", tmp_path / "x.fsr", "--checkpoint", link], "--checkpoint"),
             (["update", model, events_file, "-o", events_file], "-o/--output"),
             (["update", model, events_file, "-o", link], "-o/--output"),
             (["score", model, events_file, "-o", events_file], "-o/--output"),
             (["score", model, link, "-o", events_file], "-o/--output"),
             (["score", model, events_file, "-o", model.with_suffix(".csv")], None)]
    (tmp_path / "m.csv").symlink_to(model)  # a .csv name that is the model file
    for argv, flag in cases:
        code, out, err = run(capsys, argv + (FAST[-2:] if argv[0] != "score" else []))
        if flag is None:
            flag = "-o/--output"
        assert code == 2 and flag in err and "would be overwritten" in err, (argv, err)
    assert not calls and (events_file.read_bytes(), model.read_bytes()) == before
    code, _, err = run(capsys, ["update", model, events_file, "-o", model, "--threads", "1"])
    assert code == 0 and calls, err  # -o MODEL is the normal use of update


@pytest.mark.parametrize("epochs", ["0", "-1"])
def test_epochs_below_one_are_refused(events_file, int_model, tmp_path, capsys, epochs):
    """train --epochs 0 saved an untrained model and exited 0."""
    for argv in (["train", events_file, "-o", tmp_path / "m.fsr", "--epochs", epochs],
                 ["update", int_model, events_file, "-o", tmp_path / "m.fsr", "--epochs", epochs],
                 ["demo", "--epochs", epochs]):
        code, _, err = run(capsys, argv)
        assert code == 2 and "--epochs must be >= 1" in err and f"got {epochs}" in err, err
    assert not os.path.exists(tmp_path / "m.fsr")


# ----------------------------------------------------------------------------- seen
def test_exclude_seen_flags_and_their_deprecated_aliases(events_file, int_model, tmp_path, capsys):
    m = SASRec.load(int_model, device="cpu")
    n = m.n_items
    for flags, seen_allowed, note in (([], False, False), (["--exclude-seen"], False, False),
                                      (["--no-exclude-seen"], True, False),
                                      (["--keep-seen"], True, True)):
        code, out, err = run(capsys, ["recommend", int_model, "--session", "1,2", "-n", n] + flags)
        assert code == 0, err
        items = [line.split()[1] for line in out.splitlines()[1:]]
        assert ("1" in items) == seen_allowed and ("deprecated" in err) == note
    for flags, seen_allowed, note in (([], False, False), (["--no-exclude-seen"], True, False),
                                      (["--include-seen"], True, True)):
        out = tmp_path / "r.csv"
        code, _, err = run(capsys, ["score", int_model, events_file, "-o", out, "-n", n] + flags)
        assert code == 0 and ("--include-seen is deprecated" in err) == note, err
        got = _recs(out)
        first = got[got["user_id"] == "u0"]["item"].tolist()
        assert (1 in first) == seen_allowed
    assert fastsasrec  # the package itself imported fine
