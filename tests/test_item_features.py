"""Item features in the estimator: the table's reading, new products in the catalogue,
names beside ids, partial_fit, the model file and checkpoints."""
import json
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest

from fastsasrec import ItemFeatures, SASRec
from fastsasrec import _features, _weights

# Four categories of ten items; sessions stay inside a category, in id order.
CATS = {c: list(range(100 * (c + 1), 100 * (c + 1) + 10)) for c in range(4)}


def _sessions(n=400, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c = int(rng.integers(4))
        start = int(rng.integers(0, 6))
        out.append(CATS[c][start:start + int(rng.integers(3, 5))])
    return out


def _table(extra=()):
    rows = []
    for c, items in CATS.items():
        for j, i in enumerate(items):
            rows.append({"item_id": i, "category": f"cat{c}", "tags": [f"t{c}", "all"],
                         "price": float(10 * c + j), "title": f"Item {i}"})
    for i, c in extra:
        rows.append({"item_id": i, "category": f"cat{c}", "tags": [f"t{c}"], "price": 5.0,
                     "title": f"New {i}"})
    return pd.DataFrame(rows).set_index("item_id")


def _model(**kw):
    params = dict(factors=16, n_layers=1, max_seq=8, dropout=0.0, iterations=12, batch_size=32,
                  learning_rate=5e-3, num_threads=1, random_state=0, loss="softmax")
    params.update(kw)
    return SASRec(**params)


@pytest.fixture(scope="module")
def fitted():
    # Items 999 and 998 are new products: in the table, in no session.
    m = _model().fit(_sessions(), item_features=_table(extra=[(999, 2), (998, 3)]),
                     item_names="title")
    return m


def test_the_table_is_read_as_documented():
    t = _features.table(_table(), names="title")
    assert t.columns == ("category", "tags", "price")
    assert t.kinds == ("categorical", "multi", "numeric")
    space = t.learn(4)
    cat, tags, price = space.columns
    assert cat.values == ("cat0", "cat1", "cat2", "cat3") and set(tags.values) == {"all", "t0", "t1", "t2", "t3"}
    assert len(price.edges) == 3  # 4 buckets by quartile of the 40 prices
    # Row 0, then per column: unknown, missing, its values.
    assert space.size == 1 + (2 + 4) + (2 + 5) + (2 + 4)
    values, offsets = space.encode(t, np.array([100, 5, 309]))
    assert offsets.tolist() == [0, 0, 4, 5, 9]  # 100: category, two tags, a bucket; 5: no row
    assert [space.describe(int(v)) for v in values[offsets[2]:offsets[3]]] == ["<no features>"]
    assert [space.describe(int(v)) for v in values[offsets[1]:offsets[2]]][:3] == [
        "category='cat0'", "tags='t0'", "tags='all'"]
    assert space.describe(int(values[offsets[3] + 3])).startswith("price in [")


def test_delimited_and_missing_cells():
    df = pd.DataFrame({"genres": ["Action|Comedy", "", None, "Drama"], "year": [1990, None, 1995, 2001]},
                      index=[1, 2, 3, 4])
    t = ItemFeatures(df, multi={"genres": "|"}).table("int")
    space = t.learn(10)
    values, offsets = space.encode(t, np.array([1, 2, 3, 4]))
    bag = lambda i: [space.describe(int(v)) for v in values[offsets[i]:offsets[i + 1]]]  # noqa: E731
    assert bag(1)[:2] == ["genres='Action'", "genres='Comedy'"]
    assert bag(2) == ["genres=<missing>", "year=<missing>"]
    assert bag(3)[0] == "genres=<missing>"


@pytest.mark.parametrize("make, match", [
    (lambda: pd.DataFrame({"c": ["a", "b"]}, index=[7, 7]), "item id 7 has 2 rows"),
    (lambda: pd.DataFrame({"title": ["x"]}, index=[1]), "no feature column"),
    (lambda: [1, 2, 3], "must be a table"),
])
def test_bad_tables_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        _model(iterations=1).fit(_sessions(20), item_features=make(), item_names="title"
                                 if match == "no feature column" else None)


def test_a_table_read_with_its_ids_in_a_column_is_refused_not_misread():
    # pd.read_csv gives row numbers as the index: taken as ids, every row would be a new
    # product (the items' own ids start at 100 here) and no trained item would have features.
    read = _table().reset_index()
    with pytest.raises(ValueError, match=r"none of its 40 item ids \(0, 1, 2, \.\.\.\) is an item of "
                       r"the training sequences \(100, 101, 102, \.\.\.\); its index is row numbers.*"
                       r"column 'item_id' holds (\d+) of the \1 items: pass "
                       r"item_features=frame.set_index\('item_id'\)"):
        _model(iterations=1).fit(_sessions(), item_features=read)
    # Ids that row numbers happen to overlap (here shifted by one) would pair each item with
    # its neighbour's features: refused too, where a column of distinct ids holds as many.
    sessions = [[i - 99 for i in s] for s in _sessions()]  # items 1..309
    shifted = read.assign(item_id=read["item_id"] - 99)
    with pytest.raises(ValueError, match=r"index is row numbers .* which match \d+ of the \d+ training "
                       r"items, and its column 'item_id' holds"):
        _model(iterations=1).fit(sessions, item_features=shifted)
    # Said once, either way is taken: the id column, or row numbers given a name.
    m = _model(iterations=1).fit(sessions, item_features=ItemFeatures(shifted, id_col="item_id"))
    assert m.n_items_ == 40 and m.item_feature_values(1)[0] == "category='cat0'"
    named = shifted.rename_axis("item")
    assert _model(iterations=1).fit(sessions, item_features=named).n_items_ > 40
    # partial_fit: a table of new products alone is right, but not row numbers beside ids.
    fitted = _model(iterations=1).fit(_sessions(), item_features=_table())
    new = pd.DataFrame({"item_id": [990, 991], "category": ["cat1", "cat2"], "tags": [["t1"], ["t2"]],
                        "price": [3.0, 4.0], "title": ["A", "B"]})
    with pytest.raises(ValueError, match="index is row numbers .* column 'item_id' holds 2 of"):
        fitted.partial_fit([[100, 990, 991]], item_features=new)
    grown = fitted.partial_fit([[100, 990, 991]], item_features=new.set_index("item_id"))
    assert {990, 991} <= set(grown.item_ids_.tolist())
    # A table of row-number ids with no column of ids is what it says.
    plain = pd.DataFrame({"category": [f"c{i % 3}" for i in range(400)]})
    assert _model(iterations=1).fit(sessions, item_features=plain).n_items_ == 400


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="item_names='title'.*give item_features"):
        _model(iterations=1).fit(_sessions(20), item_names="title")
    with pytest.raises(ValueError, match="names='nope' is not a column"):
        _model(iterations=1).fit(_sessions(20), item_features=_table(), item_names="nope")
    with pytest.raises(ValueError, match="item ids are strings"):
        _model(iterations=1).fit(_sessions(20), item_features=_table().set_axis(
            [f"s{i}" for i in range(40)], axis=0))
    with pytest.raises(ValueError, match="feature_buckets must be >= 1"):
        SASRec(feature_buckets=0)
    with pytest.raises(ValueError, match="feature_pooling"):
        SASRec(feature_pooling="max")
    plain = _model(iterations=1).fit(_sessions(20))
    with pytest.raises(ValueError, match="fitted without item features"):
        plain.partial_fit(_sessions(5), item_features=_table())


def test_new_products_join_the_catalogue_from_their_features(fitted):
    assert fitted.n_items_ == 42 and {998, 999} <= set(fitted.item_ids_.tolist())
    pos = {i: k for k, i in enumerate(fitted.item_ids_.tolist())}
    assert fitted.popularity_[pos[999]] == 0
    # Their id embedding is zero: the vector is the features' part alone, the same for two
    # new items with the same values, and alike to their category's items.
    E = fitted.item_embeddings_
    assert np.abs(E[pos[999]]).sum() > 0
    sims = {i: float(E[pos[999]] @ E[pos[i]]) for i in CATS[2] + CATS[0]}
    assert np.mean([sims[i] for i in CATS[2]]) > np.mean([sims[i] for i in CATS[0]])
    assert fitted.item_feature_values(999)[0] == "category='cat2'"
    assert fitted.item_feature_values(100)[0] == "category='cat0'"


def _rank(model, session, item):
    return model.recommend(session, n=model.n_items_).ids.tolist().index(item)


def test_new_products_are_their_features_alone():
    # Two new products with the same features: the same vector (a zero id embedding), in
    # the published model's every view (item_embeddings_, the scores).
    extra = _table(extra=[(997, 1), (996, 1)])
    m = _model(iterations=4).fit(_sessions(), item_features=extra, item_names="title")
    pos = {i: k for k, i in enumerate(m.item_ids_.tolist())}
    E = m.item_embeddings_
    np.testing.assert_array_equal(E[pos[997]], E[pos[996]])
    got = m.recommend([200, 201], n=m.n_items_)
    s = dict(zip(got.ids.tolist(), got.scores.tolist()))
    assert s[997] == s[996]


def test_a_new_product_is_recommended_to_its_category(fitted):
    # 999 is in category 2 (items 300..309), with no event: it ranks higher after a
    # category-2 session than after a category-0 one, and 998 (category 3) the other way.
    assert _rank(fitted, [300, 301, 302], 999) < _rank(fitted, [100, 101, 102], 999)
    assert _rank(fitted, [400, 401, 402], 998) < _rank(fitted, [300, 301, 302], 998)
    assert fitted.recommend([300, 301, 302], n=1).ids.tolist() == [303]


def test_names_beside_ids(fitted):
    got = fitted.recommend([300, 301], n=4)
    assert got.names.tolist() == [f"Item {i}" if i < 900 else f"New {i}" for i in got.ids.tolist()]
    batch = fitted.recommend_batch([[300, 301], [424242]], n=3)
    assert batch.names.shape == (2, 3)
    for r in range(2):
        assert batch.names[r].tolist() == [f"Item {i}" if i < 900 else f"New {i}" for i in batch.ids[r].tolist()]
    sim = fitted.similar_items(100, n=3)
    assert sim.names.tolist() == [f"Item {i}" if i < 900 else f"New {i}" for i in sim.ids.tolist()]
    assert fitted.item_names_[list(fitted.item_ids_).index(999)] == "New 999"
    assert _model(iterations=1).fit(_sessions(20)).recommend([100], n=2).names is None


def test_the_model_file_keeps_features_and_names(fitted, tmp_path):
    path = tmp_path / "m.fsr"
    fitted.save(path)
    with zipfile.ZipFile(path) as z:
        meta = json.loads(z.read("fastsasrec.json"))
    assert meta["format_version"] == 5 and meta["features"]["has_names"]
    assert meta["features"]["names_column"] == "title"
    back = SASRec.load(path)
    for s in ([300, 301], [100], [999]):
        a, b = fitted.recommend(s, n=6), back.recommend(s, n=6)
        assert a.ids.tolist() == b.ids.tolist() and a.names.tolist() == b.names.tolist()
        np.testing.assert_array_equal(a.scores, b.scores)
    assert back.item_features_ == fitted.item_features_
    assert back.get_params()["feature_pooling"] == fitted.get_params()["feature_pooling"]


def test_a_model_without_features_writes_the_old_format(tmp_path):
    path = tmp_path / "plain.fsr"
    _model(iterations=1).fit(_sessions(20)).save(path)
    with zipfile.ZipFile(path) as z:
        meta = json.loads(z.read("fastsasrec.json"))
        names = z.namelist()
    assert meta["format_version"] == 1 and "features" not in meta
    assert "feature_pooling" not in meta["params"] and "feature_buckets" not in meta["params"]
    assert "n_feature_values" not in meta["engine_config"] and not any("feature" in n for n in names)


def test_a_tampered_feature_table_is_refused(fitted, tmp_path):
    path = tmp_path / "m.fsr"
    fitted.save(path)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(members["fastsasrec.json"])
    meta["features"]["columns"][0]["values"].append("extra")  # one more value than the table has
    members["fastsasrec.json"] = json.dumps(meta).encode()
    bad = tmp_path / "bad.fsr"
    with zipfile.ZipFile(bad, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(ValueError, match="n_feature_values"):
        SASRec.load(bad)


def test_partial_fit_adds_new_products_with_their_features(fitted, tmp_path):
    fitted.save(tmp_path / "m.fsr")
    m = SASRec.load(tmp_path / "m.fsr", num_threads=1)
    before = m.n_items_
    new = pd.DataFrame({"category": ["cat1", "cat9"], "tags": [["t1"], ["zzz"]], "price": [3.0, 1e6],
                        "title": ["Fresh 777", "Odd 778"]}, index=[777, 778])
    m.partial_fit(_sessions(30, seed=3), epochs=1, item_features=new, item_names="title")
    assert m.n_items_ == before + 2
    assert m.item_feature_values(777)[0] == "category='cat1'"
    assert m.item_feature_values(778)[:2] == ["category=<unknown>", "tags=<unknown>"]
    assert m.item_feature_values(778)[2].endswith(", inf)")  # beyond the fitted range: the last bucket
    got = m.recommend([110, 111], n=m.n_items_)
    pos = got.ids.tolist().index(777)
    assert got.names[pos] == "Fresh 777"


def test_partial_fit_reads_the_columns_by_name(fitted, tmp_path):
    # A table given after fit may order its columns otherwise: each is read as the column
    # of its name, never by position (two categorical columns swapped would otherwise pass
    # every check and give each new product the other's values).
    fitted.save(tmp_path / "m.fsr")
    new = pd.DataFrame({"category": ["cat1"], "tags": [["t1"]], "price": [3.0]}, index=[777])
    as_fitted = SASRec.load(tmp_path / "m.fsr", num_threads=1)
    as_fitted.partial_fit(_sessions(30, seed=3), epochs=1, item_features=new)
    reordered = SASRec.load(tmp_path / "m.fsr", num_threads=1)
    reordered.partial_fit(_sessions(30, seed=3), epochs=1,
                          item_features=new[["price", "tags", "category"]])
    assert reordered.item_feature_values(777) == as_fitted.item_feature_values(777)
    assert as_fitted.item_feature_values(777)[:2] == ["category='cat1'", "tags='t1'"]


@pytest.mark.parametrize("frame, match", [
    # a fitted column missing: its cells would be lost for every item of the table
    (pd.DataFrame({"category": ["cat1"], "tags": [["t1"]]}, index=[777]),
     r"lacks the feature column\(s\) 'price'"),
    # a column the model does not have: it would be ignored in silence
    (pd.DataFrame({"category": ["cat1"], "brand": ["b1"], "tags": [["t1"]], "price": [3.0]},
                  index=[777]), r"column\(s\) 'brand' were not feature columns at fit"),
    # a number the fitted buckets cannot hold, as fit refuses it
    (pd.DataFrame({"category": ["cat1"], "tags": [["t1"]], "price": [np.inf]}, index=[777]),
     r"column 'price', item 777: inf is not a finite number"),
])
def test_partial_fit_refuses_a_table_it_cannot_read_whole(fitted, tmp_path, frame, match):
    fitted.save(tmp_path / "m.fsr")
    m = SASRec.load(tmp_path / "m.fsr", num_threads=1)
    before = m.n_items_
    with pytest.raises(ValueError, match=match):
        m.partial_fit(_sessions(30, seed=3), epochs=1, item_features=frame)
    assert m.n_items_ == before  # the model is as it was


def test_checkpoints_resume_bit_exactly_with_features(tmp_path):
    table = _table(extra=[(999, 2)])
    whole = _model(iterations=4).fit(_sessions(), item_features=table)
    ck = tmp_path / "ck.fsr"
    _model(iterations=2).fit(_sessions(), item_features=table, checkpoint=ck)
    resumed = _model(iterations=4).fit(_sessions(), item_features=table, resume=ck)
    np.testing.assert_array_equal(whole.item_embeddings_, resumed.item_embeddings_)
    with pytest.raises(ValueError, match="other training data"):
        _model(iterations=4).fit(_sessions(), item_features=_table(), resume=ck)


def test_sum_and_mean_pooling_differ_and_both_train():
    table = _table(extra=[(999, 2)])
    a = _model(feature_pooling="mean").fit(_sessions(), item_features=table)
    b = _model(feature_pooling="sum").fit(_sessions(), item_features=table)
    assert not np.allclose(a.item_embeddings_, b.item_embeddings_)
    for m in (a, b):
        assert m.recommend([300, 301, 302], n=1).ids.tolist() == [303]
        assert _rank(m, [300, 301, 302], 999) < _rank(m, [100, 101, 102], 999)


def test_from_transactions_takes_item_features():
    rows = [(u, i, t) for u, s in enumerate(_sessions(200)) for t, i in enumerate(s)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    m = SASRec.from_transactions(df, factors=16, n_layers=1, max_seq=8, iterations=2,
                                 num_threads=1, item_features=_table(extra=[(999, 1)]),
                                 item_names="title")
    assert 999 in m.item_ids_.tolist() and m.item_names_ is not None


# ----------------------------------------------------------------------------- surfaces
def _events_csv(path, sessions):
    rows = [(u, i, t) for u, s in enumerate(sessions) for t, i in enumerate(s)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(path, index=False)


def _items_csv(path, table):
    """``table`` (indexed by item_id) as a command line reads it: the ids a column, the
    lists of "tags" joined by "|"; returns the frame written."""
    flat = table.reset_index()
    flat["tags"] = flat["tags"].map("|".join)
    flat.to_csv(path, index=False)
    return flat


def test_the_command_line_takes_features_and_prints_names(tmp_path, capsys):
    from fastsasrec.cli import main

    events, items, model = tmp_path / "events.csv", tmp_path / "items.csv", tmp_path / "m.fsr"
    _events_csv(events, _sessions(200))
    table = _items_csv(items, _table(extra=[(999, 2)]))
    args = ["--epochs", "3", "--factors", "16", "--max-seq", "8", "--threads", "1", "-q"]
    assert main(["train", str(events), "-o", str(model), "--item-features", str(items),
                 "--item-names", "title", "--item-list-col", "tags"] + args) == 0
    m = SASRec.load(model)
    assert 999 in m.item_ids_.tolist() and m.item_feature_values(100)[1:3] == ["tags='t0'", "tags='all'"]
    capsys.readouterr()
    assert main(["recommend", str(model), "--session", "300,301", "-n", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["rank", "item", "score", "name"]
    for line in out[1:]:
        rank, item, score, *name = line.split()
        assert " ".join(name) == (f"Item {item}" if int(item) < 900 else f"New {item}")
    # The new product alone, as a "new for you" slot.
    assert main(["recommend", str(model), "--session", "300,301", "-n", "3", "--new-products"]) == 0
    out = capsys.readouterr().out.splitlines()
    new = m.item_ids_[m.popularity_ == 0]  # 999, and the table's items no session holds
    assert 999 in new.tolist()
    want = m.recommend([300, 301], n=3, candidates=new)
    assert [line.split()[1] for line in out[1:]] == [str(i) for i in want.ids.tolist()]
    recs = tmp_path / "recs.csv"
    assert main(["score", str(model), str(events), "-o", str(recs), "-n", "2", "-q"]) == 0
    got = pd.read_csv(recs)
    assert list(got.columns)[:4] == ["user_id", "rank", "item", "name"]
    assert (got["name"] == got["item"].map(lambda i: f"Item {i}" if i < 900 else f"New {i}")).all()
    # The nightly e-mail's "new for you": every user's best new products, as recommend_batch.
    assert main(["score", str(model), str(events), "-o", str(recs), "-n", "2", "-q", "--new-products"]) == 0
    got = pd.read_csv(recs).sort_values(["user_id", "rank"])
    users, histories = zip(*[(u, g["item_id"].tolist()) for u, g in
                             pd.read_csv(events).sort_values("timestamp", kind="stable").groupby("user_id")])
    want = m.recommend_batch(list(histories), n=2, candidates=new)
    assert got["item"].isin(new).all()
    assert got["item"].tolist() == [i for row in want.ids.tolist() for i in row if i != -1]
    # the features file is an input: never overwritten
    assert main(["train", str(events), "-o", str(items), "--item-features", str(items)] + args) == 2
    new = pd.DataFrame({"item_id": [555], "category": ["cat1"], "tags": ["t1"], "price": [3.0],
                        "title": ["Fresh"]})
    new.to_csv(tmp_path / "new.csv", index=False)
    assert main(["update", str(model), str(events), "-o", str(tmp_path / "m2.fsr"), "--item-features",
                 str(tmp_path / "new.csv"), "--item-names", "title", "--item-list-col", "tags", "-q"]) == 0
    m2 = SASRec.load(tmp_path / "m2.fsr")
    assert 555 in m2.item_ids_.tolist() and m2.item_names_[list(m2.item_ids_).index(555)] == "Fresh"
    assert main(["train", str(events), "-o", str(model), "--item-names", "title"] + args) == 2
    # An id column that holds none of the items, beside one that does, is named in the error.
    capsys.readouterr()
    table.assign(row=range(len(table))).to_csv(items, index=False)
    assert main(["train", str(events), "-o", str(tmp_path / "m3.fsr"), "--item-features", str(items),
                 "--item-id-col", "row", "--item-names", "title"] + args) == 2
    n = len({i for s in _sessions(200) for i in s})
    assert ("none of its 41 item ids in column 'row' (0, 1, 2, ...) is an item of the training "
            f"sequences (100, 101, 102, ...); column 'item_id' holds {n} of the {n} items: is it the "
            "id column?") in capsys.readouterr().err


def test_the_server_answers_names_beside_ids(fitted):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from fastsasrec.serve import create_app

    import time

    with TestClient(create_app(fitted)) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:  # the model loads after startup
            assert time.monotonic() < deadline, "the server did not get ready"
            time.sleep(0.01)
        got = client.post("/v1/recommend", json={"session": [300, 301], "n": 3}).json()
        assert got["names"] == [f"Item {i}" if i < 900 else f"New {i}" for i in got["items"]]
        got = client.post("/v1/recommend/batch", json={"sessions": [[300], [100, 101]], "n": 2}).json()
        for r in got["results"]:
            assert r["names"] == [f"Item {i}" if i < 900 else f"New {i}" for i in r["items"]]
        got = client.post("/v1/similar", json={"item": 100, "n": 2}).json()
        assert got["names"] == [f"Item {i}" if i < 900 else f"New {i}" for i in got["items"]]
        got = client.post("/v1/sessions/s1/events", json={"items": [300]}).json()
        assert len(got["names"]) == len(got["items"])


def test_recommend_frame_and_spark_carry_names(fitted, tmp_path):
    """The batch surfaces write a "name" column after "item" for a model with names, the
    same rows as recommend_frame."""
    from fastsasrec.batch import recommend_frame

    path = tmp_path / "m.fsr"
    fitted.save(path)
    rows = [(u, i, t) for u, s in enumerate(_sessions(30, seed=5)) for t, i in enumerate(s)]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    want = recommend_frame(fitted, events, n=3).sort_values(["user_id", "rank"]).reset_index(drop=True)
    assert list(want.columns) == ["user_id", "rank", "item", "name", "score"]
    assert (want["name"] == want["item"].map(lambda i: f"Item {i}" if i < 900 else f"New {i}")).all()
    pytest.importorskip("pyspark", reason="the spark extra (pyspark) is not installed")
    import os
    import shutil

    if shutil.which("java") is None and "JAVA_HOME" not in os.environ:
        pytest.skip("Spark needs Java (java on PATH or JAVA_HOME)")
    from pyspark.sql import SparkSession

    from fastsasrec.spark import recommend

    spark = (SparkSession.builder.master("local[2]").appName("fastsasrec-names")
             .config("spark.sql.shuffle.partitions", "2").config("spark.ui.enabled", "false")
             .config("spark.sql.execution.arrow.pyspark.enabled", "true").getOrCreate())
    try:
        got = recommend(spark.createDataFrame(events), str(path), n=3, num_threads=1).toPandas()
    finally:
        spark.stop()
    got = got.sort_values(["user_id", "rank"]).reset_index(drop=True)
    assert list(got.columns) == list(want.columns)
    assert got["item"].tolist() == want["item"].tolist() and got["name"].tolist() == want["name"].tolist()


def test_an_engine_tensor_is_read_and_replaced_by_name(fitted):
    """_weights.tensor_rows / set_tensor / zero_rows touch the named tensor alone."""
    engine = fitted._state.engine
    before = engine.get_params().copy()
    emb = _weights.tensor_rows(engine, "item_emb")
    assert emb.ndim == 2 and emb.shape[0] == fitted.n_items + 1
    changed = emb + 1.0
    _weights.set_tensor(engine, "item_emb", changed)
    np.testing.assert_array_equal(_weights.tensor_rows(engine, "item_emb"), changed)
    _weights.zero_rows(engine, "item_emb", np.array([1, 2]))
    now = _weights.tensor_rows(engine, "item_emb")
    assert not now[[1, 2]].any()
    np.testing.assert_array_equal(now[3:], changed[3:])
    after = engine.get_params()
    off = {n: (int(o), int(np.prod(s))) for n, o, s in engine.tensors()}["item_emb"]
    outside = np.ones(before.size, bool)
    outside[off[0]:off[0] + off[1]] = False
    np.testing.assert_array_equal(after[outside], before[outside])
    _weights.set_tensor(engine, "item_emb", emb)  # the fixture's model as it was


def _listed(table, tz=None):
    """The table with a "listed" datetime column: a day per item, in item order."""
    days = pd.to_datetime("2024-01-01") + pd.to_timedelta(np.arange(len(table)), unit="D")
    return table.assign(listed=days.tz_localize(tz) if tz else days)


def test_a_datetime_column_is_bucketed_by_time():
    # A release date or the day a product was listed: buckets by time (edges at dates of
    # the table, named as dates), a missing date its missing row, a product listed after
    # fit in the newest bucket; a zone is honoured (read as the instant it names).
    t = _listed(_table())
    t.loc[t.index[5], "listed"] = pd.NaT
    tab = _features.table(t, names="title")
    assert tab.kinds == ("categorical", "multi", "numeric", "time")
    space = tab.learn(4)
    listed = space.columns[3]
    assert listed.kind == "time" and len(listed.edges) == 3
    assert all(e % 86400 == 0 for e in listed.edges)  # instants of the table: midnights
    names = [space.describe(r) for r in range(space.bases()[3] + 2, space.size)]
    assert names[0] == "listed in [-inf, 2024-01-11)" and names[-1].endswith(", inf)")
    assert all("listed in [" in n for n in names)
    values, offsets = space.encode(tab, t.index.to_numpy())
    bag = lambda i: [space.describe(int(v)) for v in values[offsets[i + 1]:offsets[i + 2]]]
    assert bag(5)[-1] == "listed=<missing>" and bag(0)[-1] == names[0] and bag(39)[-1] == names[-1]
    later = _listed(_table(extra=[(999, 1)])).loc[[999]]
    later["listed"] = pd.Timestamp("2030-06-01")
    v, o = space.encode(_features.table(later, names="title"), np.array([999]))
    assert space.describe(int(v[o[1]:o[2]][-1])) == names[-1]
    # 01:00 in Berlin is midnight UTC: the same instants, the same buckets.
    berlin = _listed(_table(), tz="Europe/Berlin")
    berlin["listed"] = berlin["listed"] + pd.Timedelta(hours=1)
    assert (_features.table(berlin, names="title").learn(4).columns[3].edges
            == _features.table(_listed(_table()), names="title").learn(4).columns[3].edges)


def test_dates_as_text_are_read_when_named_and_a_bad_one_is_named():
    t = _listed(_table())
    t["listed"] = t["listed"].dt.strftime("%Y-%m-%d")
    with pytest.warns(UserWarning, match=r"if they are dates, say time=\['listed'\]"):
        assert _features.table(t, names="title").kinds[-1] == "categorical"
    named = ItemFeatures(t, names="title", time=["listed"]).table(None)
    assert named.kinds[-1] == "time"
    assert named.learn(4).columns[-1] == _features.table(_listed(_table()), names="title").learn(4).columns[-1]
    t.loc[112, "listed"] = "soon"
    with pytest.raises(ValueError, match=r"column 'listed' \(a time column\), item 112: 'soon' is not a date"):
        ItemFeatures(t, names="title", time=["listed"]).table(None)
    with pytest.raises(ValueError, match=r"time: 'when' is not a feature column"):
        ItemFeatures(t, names="title", time=["when"]).table(None)


def test_a_time_column_trains_saves_and_takes_new_products(tmp_path):
    m = _model(iterations=3).fit(_sessions(), item_features=_listed(_table()), item_names="title")
    assert m.item_feature_values(100)[-1].startswith("listed in [")
    m.save(tmp_path / "m.fsr")
    back = SASRec.load(tmp_path / "m.fsr")
    assert back.item_features_ == m.item_features_ and back.item_feature_values(100) == m.item_feature_values(100)
    # Format version 4 holds time columns (5 the names' column too): an older reader says
    # it is too old; a file claiming an older version with one is refused.
    with zipfile.ZipFile(tmp_path / "m.fsr") as z:
        members = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(members["fastsasrec.json"])
    assert meta["format_version"] == 5
    del meta["features"]["names_column"]
    meta["format_version"] = 3
    members["fastsasrec.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(tmp_path / "old.fsr", "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(ValueError, match="a time feature column in a file of format version 3"):
        SASRec.load(tmp_path / "old.fsr")
    # A checkpoint with a time column resumes bit-exactly.
    table = _listed(_table())
    whole = _model(iterations=4).fit(_sessions(), item_features=table, item_names="title")
    _model(iterations=2).fit(_sessions(), item_features=table, item_names="title", checkpoint=tmp_path / "ck")
    resumed = _model(iterations=4).fit(_sessions(), item_features=table, item_names="title",
                                       resume=tmp_path / "ck")
    np.testing.assert_array_equal(whole.item_embeddings_, resumed.item_embeddings_)
    new = _listed(_table(extra=[(777, 1)])).loc[[777]]
    new["listed"] = pd.Timestamp("2031-01-01")
    back.partial_fit(_sessions(30, seed=3), epochs=1, item_features=new, item_names="title")
    assert back.item_feature_values(777)[-1].endswith(", inf)")  # the newest bucket
    # Dates as text are read as times again without naming them: the model knows.
    text = new.rename(index={777: 776}).assign(listed=["2031-01-02"])
    back.partial_fit(_sessions(30, seed=3), epochs=1, item_features=text, item_names="title")
    assert back.item_feature_values(776)[-1].endswith(", inf)")
    # The column as numbers where the model read times is refused, by name.
    wrong = new.assign(listed=[1.7e9])
    with pytest.raises(ValueError, match=r"column 'listed' is read as times but holds numbers"):
        back.partial_fit(_sessions(30, seed=3), epochs=1, item_features=wrong, item_names="title")
    with pytest.raises(ValueError, match=r"column 'listed' \(a time column\), item 777: 'soon' is not a date"):
        back.partial_fit(_sessions(30, seed=3), epochs=1, item_features=new.assign(listed=["soon"]),
                         item_names="title")
    plain = _model(iterations=2).fit(_sessions(), item_features=_table().assign(listed=np.arange(40.0)),
                                     item_names="title")
    with pytest.raises(ValueError, match=r"column 'listed' holds times but the model read it at fit as numeric"):
        plain.partial_fit(_sessions(30, seed=3), epochs=1, item_features=new, item_names="title")


def test_the_command_line_reads_a_time_column(tmp_path, capsys):
    from fastsasrec.cli import main

    events, items, model = tmp_path / "events.csv", tmp_path / "items.csv", tmp_path / "m.fsr"
    _events_csv(events, _sessions(200))
    table = _items_csv(items, _listed(_table()).assign(listed=lambda t: t["listed"].dt.strftime("%Y-%m-%d")))
    args = ["--epochs", "2", "--factors", "16", "--max-seq", "8", "--threads", "1", "-q",
            "--item-features", str(items), "--item-names", "title", "--item-list-col", "tags"]
    assert main(["train", str(events), "-o", str(model), "--item-time-col", "listed"] + args) == 0
    assert SASRec.load(model).item_feature_values(100)[-1].startswith("listed in [-inf, 2024-01-")
    assert main(["train", str(events), "-o", str(model), "--item-time-col", "when"] + args) == 2
    assert "time: 'when' is not a feature column" in capsys.readouterr().err
    # update reads the column as times again without the flag: the model knows it.
    new = table.iloc[:1].assign(item_id=[555], listed=["2030-01-01"], title=["Fresh"])
    new.to_csv(tmp_path / "new.csv", index=False)
    assert main(["update", str(model), str(events), "-o", str(model), "--item-features",
                 str(tmp_path / "new.csv"), "--item-names", "title", "--item-list-col", "tags", "-q"]) == 0
    assert SASRec.load(model).item_feature_values(555)[-1].endswith(", inf)")
