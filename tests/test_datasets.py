"""Built-in data: the synthetic store (sessions, catalogue, event log) and the MovieLens
100K reader and downloader (never against the network: a zip built here, served from a
file:// address, stands in for GroupLens)."""
import hashlib
import os
import re
import zipfile
from urllib.error import URLError

import numpy as np
import pandas as pd
import pytest

import fastsasrec.datasets as ds
from fastsasrec.datasets import (
    movielens_100k,
    synthetic_store,
    synthetic_store_catalog,
    synthetic_store_events,
)


# ----------------------------------------------------------------------------- synthetic store
def test_synthetic_store_is_deterministic_and_well_formed():
    sessions, names = synthetic_store(n_sessions=500, random_state=7)
    again, names2 = synthetic_store(n_sessions=500, random_state=7)
    other, _ = synthetic_store(n_sessions=500, random_state=8)
    assert sessions == again and names == names2 and sessions != other
    assert len(sessions) == 500 and len(names) == 300
    assert all(3 <= len(s) <= 6 for s in sessions)
    assert {x for s in sessions for x in s} <= set(names)
    assert all(isinstance(x, int) for s in sessions for x in s)
    # the sessions of a given seed do not change between versions
    assert synthetic_store(n_sessions=5, random_state=0)[0][0] == [1080, 1052, 1255, 1256, 1257]
    short, _ = synthetic_store(n_sessions=200, random_state=0, min_len=2, max_len=2, noise=0.0)
    assert all(len(s) == 2 for s in short)


def test_synthetic_store_sessions_follow_journeys():
    sessions, names = synthetic_store(n_sessions=2000, random_state=0, noise=0.0)
    catalog = synthetic_store_catalog()
    for s in sessions:  # without noise: one brand and category, consecutive journey steps
        assert len({catalog[x][1] for x in s}) == 1
        assert len({names[x].split()[0] for x in s}) == 1
        assert np.all(np.diff(s) == 1)


def test_catalog_names_and_categories():
    catalog = synthetic_store_catalog()
    _, names = synthetic_store(n_sessions=1)
    assert {k: v[0] for k, v in catalog.items()} == names
    categories = {c for _, c in catalog.values()}
    assert len(categories) == 10 and "coffee" in categories
    assert [catalog[i] for i in range(1000, 1004)] == [
        ("Acme espresso machine", "coffee"), ("Acme burr grinder", "coffee"),
        ("Acme coffee scale", "coffee"), ("Acme whole-bean coffee", "coffee")]


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_sessions=0), "n_sessions must be a positive integer"),
    (dict(n_sessions=2.5), "n_sessions must be a positive integer"),
    (dict(n_sessions=True), "n_sessions must be a positive integer"),
    (dict(noise=1.0), "noise must be in"),
    (dict(min_len=1), "min_len"),
    (dict(min_len=5, max_len=4), "min_len"),
])
def test_synthetic_store_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic_store(**kwargs)


def test_events_rebuild_the_sessions():
    sessions, _ = synthetic_store(n_sessions=300, random_state=4)
    events = synthetic_store_events(n_sessions=300, random_state=4)
    assert list(events.columns) == ["session_id", "product_id", "timestamp"]
    assert str(events["timestamp"].dtype).startswith("datetime64")
    assert events["session_id"].dtype.kind == "i" and events["product_id"].dtype.kind == "i"
    assert len(events) == sum(map(len, sessions))
    assert events["timestamp"].is_monotonic_increasing  # a log: time order, sessions interleaved
    assert not events["session_id"].is_monotonic_increasing
    rebuilt = events.sort_values(["session_id", "timestamp"], kind="stable").groupby("session_id")["product_id"]
    assert [list(g) for _, g in rebuilt] == sessions
    per_session = events.groupby("session_id")["timestamp"]
    assert (per_session.apply(lambda t: t.diff().dropna().min()) >= pd.Timedelta(seconds=5)).all()
    pd.testing.assert_frame_equal(events, synthetic_store_events(n_sessions=300, random_state=4))


def test_events_feed_from_transactions():
    from fastsasrec import SASRec

    events = synthetic_store_events(n_sessions=200, random_state=1)
    model = SASRec.from_transactions(events, user_col="session_id", item_col="product_id",
                                     timestamp_col="timestamp", factors=8, iterations=1, num_threads=1)
    assert set(model.item_ids.tolist()) == set(events["product_id"].tolist())


# ----------------------------------------------------------------------------- MovieLens
U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t377\t1\t878887116\n22\t51\t2\t880606923\n"
U_ITEM = ("51|Legends of the Fall (1994)|01-Jan-1994||http://x|0|1\n"
          "242|Kolya (1996)|24-Jan-1997||http://x|0|0\n"
          "302|L.A. Confidential (1997)|01-Jan-1997||http://x|0|0\n"
          "377|Misérables, Les (1995)|01-Jan-1995||http://x|0|0\n")


def make_folder(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text(U_DATA)
    (folder / "u.item").write_bytes(U_ITEM.encode("latin-1"))
    return folder


def make_zip(path, evil=False):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ml-100k/u.data", U_DATA)
        z.writestr("ml-100k/u.item", U_ITEM.encode("latin-1"))
        z.writestr("ml-100k/README", "terms of use")
        z.writestr("ml-100k/u1.base", "not extracted")
        if evil:
            z.writestr("../../escape.txt", "must not land outside the cache")
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty download cache and working directory, away from the user's home."""
    c = tmp_path / "cache"
    monkeypatch.setenv("FASTSASREC_CACHE", str(c))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return c


def check_fake(events, titles):
    assert list(events.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert all(events[c].dtype == np.int64 for c in events.columns)
    assert events.values.tolist()[0] == [196, 242, 3, 881250949] and len(events) == 4
    assert titles[377] == "Misérables, Les (1995)" and titles[242] == "Kolya (1996)" and len(titles) == 4


def test_movielens_reads_a_local_folder(tmp_path, cache):
    folder = make_folder(tmp_path / "data" / "ml-100k")
    check_fake(*movielens_100k(folder))
    check_fake(*movielens_100k(str(tmp_path / "data")))  # the folder above ml-100k works too
    make_folder(cache.parent / "work" / "ml-100k")
    check_fake(*movielens_100k())  # ./ml-100k by default


def test_movielens_missing_folder_names_the_paths_tried(tmp_path, cache):
    with pytest.raises(FileNotFoundError) as e:
        movielens_100k()
    msg = str(e.value)
    assert os.path.join(os.getcwd(), "ml-100k") in msg and str(cache / "ml-100k") in msg
    assert "path=" in msg and "download=True" in msg
    with pytest.raises(FileNotFoundError, match="nowhere"):
        movielens_100k(tmp_path / "nowhere")


def test_movielens_rejects_a_malformed_file(tmp_path, cache):
    folder = make_folder(tmp_path / "ml")
    (folder / "u.data").write_text("196 242 three\n")
    with pytest.raises(ValueError, match="u.data"):
        movielens_100k(folder)


def test_download_verifies_and_extracts_only_the_data(tmp_path, cache, monkeypatch):
    archive = tmp_path / "served" / "ml-100k.zip"
    archive.parent.mkdir()
    digest = make_zip(archive, evil=True)
    monkeypatch.setattr(ds, "ML100K_URL", archive.as_uri())
    monkeypatch.setattr(ds, "ML100K_SHA256", digest)
    check_fake(*movielens_100k(download=True))
    assert sorted(os.listdir(cache)) == ["ml-100k"]  # the zip itself is removed
    assert sorted(os.listdir(cache / "ml-100k")) == ["README", "u.data", "u.item"]
    assert not any(p.name == "escape.txt" for p in tmp_path.rglob("*"))
    monkeypatch.setattr(ds, "ML100K_URL", "file:///nonexistent/should-not-be-fetched.zip")
    check_fake(*movielens_100k())  # later calls find the cache without downloading
    # with path=, the download goes there
    monkeypatch.setattr(ds, "ML100K_URL", archive.as_uri())
    check_fake(*movielens_100k(tmp_path / "mine", download=True))
    assert sorted(os.listdir(tmp_path / "mine" / "ml-100k")) == ["README", "u.data", "u.item"]


def test_download_checksum_mismatch_is_refused(tmp_path, cache, monkeypatch):
    archive = tmp_path / "ml-100k.zip"
    make_zip(archive)
    monkeypatch.setattr(ds, "ML100K_URL", archive.as_uri())  # the official checksum stays
    with pytest.raises(ValueError, match="checksum mismatch") as e:
        movielens_100k(download=True)
    assert hashlib.sha256(archive.read_bytes()).hexdigest() in str(e.value)
    assert not cache.exists() or os.listdir(cache) == []  # nothing half-written is left


def test_download_without_a_known_checksum_warns(tmp_path, cache, monkeypatch):
    archive = tmp_path / "ml-100k.zip"
    make_zip(archive)
    monkeypatch.setattr(ds, "ML100K_URL", archive.as_uri())
    monkeypatch.setattr(ds, "ML100K_SHA256", None)
    with pytest.warns(UserWarning, match="NOT verified"):
        check_fake(*movielens_100k(download=True))


def test_download_of_something_else_is_refused(tmp_path, cache, monkeypatch):
    page = tmp_path / "ml-100k.zip"
    page.write_text("<html>moved</html>")
    monkeypatch.setattr(ds, "ML100K_URL", page.as_uri())
    monkeypatch.setattr(ds, "ML100K_SHA256", hashlib.sha256(page.read_bytes()).hexdigest())
    with pytest.raises(ValueError, match="not a valid zip"):
        movielens_100k(download=True)


def test_offline_download_says_so(cache, monkeypatch):
    def offline(url, timeout=None):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(ds, "urlopen", offline)
    with pytest.raises(ConnectionError) as e:
        movielens_100k(download=True)
    msg = str(e.value)
    assert ds.ML100K_URL in msg and "name resolution" in msg and "path=" in msg
    assert not cache.exists() or os.listdir(cache) == []


def test_official_checksum_constant():
    assert ds.ML100K_URL == "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
    assert re.fullmatch(r"[0-9a-f]{64}", ds.ML100K_SHA256)


def test_real_movielens_if_present(ml100k_path):
    events, titles = movielens_100k(ml100k_path)
    assert events.shape == (100_000, 4)
    assert events["user_id"].nunique() == 943 and events["item_id"].nunique() == 1682
    assert len(titles) == 1682 and titles[1] == "Toy Story (1995)"
