"""Batch scoring of event logs: recommend_frame, and score_file / ``fastsasrec score``
streaming a file in chunks (unsorted, or sorted by user), written atomically with the
model's SHA-256 in the output's metadata."""
import hashlib
import json
import os
import sys

import numpy as np
import pandas as pd
import pytest

from fastsasrec import SASRec, batch
from fastsasrec.cli import main

pq = pytest.importorskip("pyarrow.parquet")


def _events(n_users=150, n_items=60, seed=0):
    """Users of 2..30 events (several longer than max_seq), rows shuffled, equal times."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        t = int(rng.integers(0, 1000))
        for k in range(int(rng.integers(2, 31))):
            t += int(rng.integers(0, 3))  # ties: file order breaks them
            rows.append((1000 + u, int(rng.integers(1, n_items + 1)), t))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    ev = _events()
    seqs = [g.sort_values("timestamp", kind="stable")["item_id"].tolist()
            for _, g in ev.groupby("user_id", sort=True)]
    m = SASRec(factors=16, n_layers=1, max_seq=8, iterations=3, num_threads=1, device="cpu").fit(seqs)
    path = d / "m.fsr"
    m.save(path)
    return m, str(path), ev, d


def _by_hand(m, ev, n, exclude_seen=True):
    """Each user's whole history by (time, file order), through recommend_batch."""
    users, sessions = [], []
    for u, g in ev.groupby("user_id", sort=True):
        users.append(u)
        sessions.append(g.sort_values("timestamp", kind="stable")["item_id"].tolist())
    return users, *m.recommend_batch(sessions, n=n, exclude_seen=exclude_seen)


def test_recommend_frame_is_recommend_batch_on_each_users_history(fitted):
    m, _, ev, _ = fitted
    out = batch.recommend_frame(m, ev, "user_id", "item_id", "timestamp", n=5)
    assert list(out.columns) == ["user_id", "rank", "item", "score"]
    users, ids, scores = _by_hand(m, ev, 5)
    assert out["user_id"].tolist() == list(np.repeat(users, 5))
    assert out["rank"].tolist() == list(range(1, 6)) * len(users)
    np.testing.assert_array_equal(out["item"].to_numpy(), ids.ravel())
    np.testing.assert_allclose(out["score"].to_numpy(), scores.ravel(), rtol=1e-6, atol=1e-6)
    keep = batch.recommend_frame(m, ev, "user_id", "item_id", "timestamp", n=5, exclude_seen=False)
    np.testing.assert_array_equal(keep["item"].to_numpy(), _by_hand(m, ev, 5, False)[1].ravel())


def test_every_item_of_the_history_is_seen_not_only_the_last_max_seq(fitted):
    """The model reads the last max_seq (8) events, but an item of an earlier event is
    never recommended (it was: ML-100K user 1 got two movies they had rated)."""
    m, _, ev, _ = fitted
    out = batch.recommend_frame(m, ev, "user_id", "item_id", "timestamp", n=m.n_items)
    long = 0
    for u, g in ev.groupby("user_id"):
        items = g.sort_values("timestamp", kind="stable")["item_id"].tolist()
        long += len(set(items[:-8]) - set(items[-8:])) > 0
        got = out.loc[out["user_id"] == u, "item"].tolist()
        assert not set(got) & set(items) and len(got) == m.n_items - len(set(items))
    assert long > 20  # the log has users whose early items are outside the window


@pytest.mark.parametrize("fmt,sorted_by_user,chunk", [("parquet", False, 37), ("csv", False, 1000),
                                                      ("parquet", True, 29), ("csv", True, 5)])
def test_score_file_streams_to_the_same_answers(fitted, tmp_path, fmt, sorted_by_user, chunk):
    m, model_path, ev, _ = fitted
    src = ev.sort_values(["user_id", "timestamp"], kind="stable") if sorted_by_user else ev
    events = tmp_path / f"ev.{fmt}"
    src.to_parquet(events) if fmt == "parquet" else src.to_csv(events, index=False)
    out = tmp_path / ("recs.csv" if fmt == "parquet" else "recs.parquet")
    done = batch.score_file(m, model_path, str(events), str(out), n=5, sorted_by_user=sorted_by_user,
                            chunk_rows=chunk)
    want = batch.recommend_frame(m, ev, "user_id", "item_id", "timestamp", n=5)
    got = pd.read_csv(out) if out.suffix == ".csv" else pq.read_table(out).to_pandas()
    assert done["users"] == ev["user_id"].nunique() and done["rows"] == len(want) == len(got)
    # users are written as they were read: a CSV's as text
    assert got["user_id"].tolist() == [str(u) if fmt == "csv" else u for u in want["user_id"]]
    np.testing.assert_array_equal(got["item"].to_numpy(), want["item"].to_numpy())
    np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), rtol=1e-6, atol=1e-6)
    sha = hashlib.sha256(open(model_path, "rb").read()).hexdigest()
    if out.suffix == ".parquet":
        meta = json.loads(pq.read_schema(out).metadata[b"fastsasrec"])
    else:
        meta = json.load(open(str(out) + ".meta.json"))["fastsasrec"]
    assert meta["model_sha256"] == sha and meta["n"] == 5
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_out_of_order_input_with_sorted_by_user_fails_and_keeps_the_old_output(fitted, tmp_path, capsys):
    m, model_path, ev, _ = fitted
    events = tmp_path / "ev.csv"
    ev.to_csv(events, index=False)  # shuffled: not sorted by user
    out = tmp_path / "recs.parquet"
    out.write_bytes(b"yesterday")
    code = main(["score", model_path, str(events), "-o", str(out), "--sorted-by-user", "--chunk-rows", "10"])
    err = capsys.readouterr().err
    assert code == 2 and "(--sorted-by-user): user" in err and "comes after user" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert out.read_bytes() == b"yesterday"
    assert sorted(os.listdir(tmp_path)) == ["ev.csv", "recs.parquet"]


def test_bad_rows_are_clear_errors_and_write_nothing(fitted, tmp_path, capsys):
    m, model_path, ev, _ = fitted
    bad = ev.copy().astype({"item_id": object})
    bad.loc[17, "item_id"] = None  # an empty cell in row 17 (the chunk of rows 10..19)
    events = tmp_path / "ev.csv"
    bad.to_csv(events, index=False)
    out = tmp_path / "recs.parquet"
    code = main(["score", model_path, str(events), "-o", str(out), "--chunk-rows", "10", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "column 'item_id'" in err and "missing value at row 17" in err
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["ev.csv"]
    assert main(["score", model_path, str(events), "-o", str(tmp_path / "recs.json")]) == 2
    assert "must end in .parquet or .csv" in capsys.readouterr().err
    assert main(["score", model_path, str(tmp_path / "none.csv"), "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    ev.to_csv(events, index=False)
    assert main(["score", model_path, str(events), "-o", str(out), "--item-col", "sku"]) == 2
    assert "has no column 'sku'" in capsys.readouterr().err


def test_score_command_end_to_end(fitted, tmp_path, capsys):
    m, model_path, ev, _ = fitted
    events = tmp_path / "ev.parquet"
    ev.to_parquet(events)
    out = tmp_path / "recs.parquet"
    assert main(["score", model_path, str(events), "-o", str(out), "-n", "3", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert f"scored {ev['user_id'].nunique()} users" in captured.out
    assert captured.err == ""  # no progress (nor carriage returns) where stderr is no terminal
    got = pq.read_table(out).to_pandas()
    assert got.groupby("user_id").size().eq(3).all()


def test_score_shows_progress_on_a_terminal_only(fitted, tmp_path, capsys, monkeypatch):
    m, model_path, ev, _ = fitted
    events = tmp_path / "ev.csv"
    ev.to_csv(events, index=False)
    out = tmp_path / "recs.csv"
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["score", model_path, str(events), "-o", str(out), "--chunk-rows", "100"]) == 0
    err = capsys.readouterr().err
    assert "\rread " in err and f"scored {ev['user_id'].nunique()} users" in err
    assert main(["score", model_path, str(events), "-o", str(out), "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_score_ranks_candidates_and_leaves_out_the_denylist(fitted, tmp_path, capsys):
    # A nightly "new for you" e-mail: only the candidates, never an out-of-stock item; the
    # metadata says how many of each the model knew.  Bad lists are refused before reading.
    m, model_path, ev, _ = fitted
    events = tmp_path / "ev.csv"
    ev.to_csv(events, index=False)
    out = tmp_path / "recs.parquet"
    (tmp_path / "stock.txt").write_text("\ufeff7\r\n8,9\r\n\r\n4242\r\n", encoding="utf-8")  # a BOM, CRLF
    assert main(["score", model_path, str(events), "-o", str(out), "-n", "3", "-q",
                 "--candidates", "3,7,8,11,12,20,4243", "--denylist", f"@{tmp_path / 'stock.txt'}"]) == 0
    err = capsys.readouterr().err
    assert "--candidates not in the model's catalogue, ignored: 4243" in err
    assert "--denylist not in the model's catalogue, ignored: 4242" in err
    got = pq.read_table(out).to_pandas()
    want = batch.recommend_frame(m, ev, n=3, time_col="timestamp", candidates=[3, 7, 8, 11, 12, 20],
                                 denylist=[7, 8, 9])
    assert set(got["item"]) <= {3, 11, 12, 20} and len(got) == len(want)
    np.testing.assert_array_equal(got["item"].to_numpy(), want["item"].to_numpy())
    meta = json.loads(pq.read_schema(out).metadata[b"fastsasrec"])
    assert meta["candidates"] == 6 and meta["denylist"] == 3
    out.unlink()
    for args, message in [
        (["--candidates", "4243,4244"], "--candidates: none of '4243,4244' is in the model's catalogue"),
        (["--candidates", "3", "--new-products"], "give one"),
        (["--new-products"], "every item of this model has training events"),
        (["--denylist", f"@{tmp_path / 'none.txt'}"], "--denylist '@"),
        (["--candidates", "3,x"], "--candidates: 'x' is not an integer"),
    ]:
        assert main(["score", model_path, str(events), "-o", str(out), "-q"] + args) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
    with pytest.raises(ValueError, match="candidates: none of the ids given"):
        batch.score_file(m, model_path, str(events), str(out), candidates=[4243])
    with pytest.raises(ValueError, match="denylist must be a sequence of item ids"):
        batch.recommend_frame(m, ev, denylist=7)
    assert not out.exists()
