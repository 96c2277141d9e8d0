"""The display names' column is remembered: a model fitted with ``item_names`` reads the
same column as names again when partial_fit (or ``fastsasrec update``) is given a table of
the same layout, so one items file serves fit and update.  Model files record the column
from format version 5 (checkpoints from 4); files of earlier versions still load."""
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from fastsasrec import ItemFeatures, SASRec

from test_item_features import _events_csv, _items_csv, _model, _sessions, _table


def _new_products():
    return pd.DataFrame({"category": ["cat1", "cat2"], "tags": [["t1"], ["t2"]], "price": [3.0, 4.0],
                         "title": ["Fresh 555", "Fresh 556"]}, index=[555, 556])


def _rewrite(src, dst, edit):
    """A copy of model file ``src`` at ``dst`` with its header changed by ``edit``."""
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(members["fastsasrec.json"])
    edit(meta)
    members["fastsasrec.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)


def test_partial_fit_reads_the_fitted_names_column_again(tmp_path):
    m = _model(iterations=2).fit(_sessions(), item_features=_table(), item_names="title")
    grown = m.partial_fit([[100, 555]], item_features=_new_products())
    assert grown.recommend([100], n=60).names.tolist().count("Fresh 556") == 1
    names = dict(zip(grown.item_ids_.tolist(), grown.item_names_.tolist()))
    assert names[555] == "Fresh 555" and names[556] == "Fresh 556" and names[100] == "Item 100"
    # Naming it, or another column, still works; a table without it gives no new names.
    other = _new_products().rename(columns={"title": "label"})
    grown = _model(iterations=2).fit(_sessions(), item_features=_table(), item_names="title") \
        .partial_fit([[100, 555]], item_features=other, item_names="label")
    assert dict(zip(grown.item_ids_.tolist(), grown.item_names_.tolist()))[556] == "Fresh 556"
    grown = _model(iterations=2).fit(_sessions(), item_features=_table(), item_names="title") \
        .partial_fit([[100, 555]], item_features=_new_products().drop(columns="title"))
    assert dict(zip(grown.item_ids_.tolist(), grown.item_names_.tolist()))[556] == ""
    # An ItemFeatures that names its own display column keeps it.
    grown = _model(iterations=2).fit(_sessions(), item_features=_table(), item_names="title") \
        .partial_fit([[100, 555]], item_features=ItemFeatures(other, names="label"))
    assert dict(zip(grown.item_ids_.tolist(), grown.item_names_.tolist()))[555] == "Fresh 555"
    # A pyarrow table (its columns read without converting it) is read the same way.
    pa = pytest.importorskip("pyarrow")
    arrow = pa.Table.from_pandas(_new_products().rename_axis("item_id").reset_index())
    grown = _model(iterations=2).fit(_sessions(), item_features=_table(), item_names="title") \
        .partial_fit([[100, 555]], item_features=ItemFeatures(arrow, id_col="item_id"))
    assert dict(zip(grown.item_ids_.tolist(), grown.item_names_.tolist()))[556] == "Fresh 556"


def test_without_names_at_fit_the_column_is_still_refused():
    m = _model(iterations=2).fit(_sessions(), item_features=_table().drop(columns="title"))
    with pytest.raises(ValueError, match=r"column\(s\) 'title' were not feature columns at fit"):
        m.partial_fit([[100, 555]], item_features=_new_products())


def test_the_model_file_keeps_the_column_and_older_files_load(tmp_path):
    m = _model(iterations=2).fit(_sessions(), item_features=_table(), item_names="title")
    m.save(tmp_path / "m.fsr")
    with zipfile.ZipFile(tmp_path / "m.fsr") as z:
        meta = json.loads(z.read("fastsasrec.json"))
    assert meta["format_version"] == 5 and meta["features"]["names_column"] == "title"
    back = SASRec.load(tmp_path / "m.fsr")
    assert "names from column 'title'" in back.describe_item_features()
    grown = back.partial_fit([[100, 555]], item_features=_new_products())
    assert dict(zip(grown.item_ids_.tolist(), grown.item_names_.tolist()))[556] == "Fresh 556"

    # A file of version 4 (names, no column) loads and scores as before; its partial_fit
    # needs the column named.
    def as_v4(meta):
        meta["format_version"] = 4
        del meta["features"]["names_column"]

    _rewrite(tmp_path / "m.fsr", tmp_path / "v4.fsr", as_v4)
    old = SASRec.load(tmp_path / "v4.fsr")
    a, b = old.recommend([100, 101], n=5), m.recommend([100, 101], n=5)
    assert a.ids.tolist() == b.ids.tolist() and a.names.tolist() == b.names.tolist()
    np.testing.assert_array_equal(a.scores, b.scores)
    with pytest.raises(ValueError, match=r"'title' were not feature columns at fit"):
        old.partial_fit([[100, 555]], item_features=_new_products())
    assert old.partial_fit([[100, 555]], item_features=_new_products(), item_names="title") \
        .item_names_[-1] == "Fresh 556"

    # The column in a file that claims an older version, or not a string: refused.
    def claims_v4(meta):
        meta["format_version"] = 4

    _rewrite(tmp_path / "m.fsr", tmp_path / "bad.fsr", claims_v4)
    with pytest.raises(ValueError, match="a names_column in a file of format version 4"):
        SASRec.load(tmp_path / "bad.fsr")
    for value in (7, "", "x" * 1001):
        def wrong(meta, value=value):
            meta["features"]["names_column"] = value

        _rewrite(tmp_path / "m.fsr", tmp_path / "bad.fsr", wrong)
        with pytest.raises(ValueError, match="invalid features.names_column"):
            SASRec.load(tmp_path / "bad.fsr")


def test_a_checkpoint_keeps_the_column(tmp_path):
    ck = tmp_path / "job.ckpt"
    _model(iterations=2).fit(_sessions(), item_features=_table(), item_names="title", checkpoint=ck)
    with zipfile.ZipFile(ck) as z:
        meta = json.loads(z.read("fastsasrec.json"))
    assert meta["format_version"] == 4 and meta["features"]["names_column"] == "title"
    whole = _model(iterations=4).fit(_sessions(), item_features=_table(), item_names="title")
    resumed = _model(iterations=4).fit(_sessions(), item_features=_table(), item_names="title", resume=ck)
    np.testing.assert_array_equal(whole.item_embeddings_, resumed.item_embeddings_)
    assert "names from column 'title'" in resumed.describe_item_features()


def test_update_takes_the_same_items_file_as_train(tmp_path, capsys):
    from fastsasrec.cli import main

    events, items, model = tmp_path / "events.csv", tmp_path / "items.csv", tmp_path / "m.fsr"
    _events_csv(events, _sessions(200))
    _items_csv(items, _table())
    _items_csv(tmp_path / "new.csv", _new_products().rename_axis("item_id"))
    _events_csv(tmp_path / "today.csv", [[100, 101, 555]])
    assert main(["train", str(events), "-o", str(model), "--epochs", "1", "--factors", "16",
                 "--max-seq", "8", "--threads", "1", "-q", "--item-features", str(items),
                 "--item-names", "title", "--item-list-col", "tags"]) == 0
    assert main(["update", str(model), str(tmp_path / "today.csv"), "-o", str(model), "--epochs", "1",
                 "-q", "--item-features", str(tmp_path / "new.csv")]) == 0
    assert "names from column 'title'" in capsys.readouterr().out
    assert main(["recommend", str(model), "--session", "100,101", "-n", "2", "--new-products"]) == 0
    out = capsys.readouterr().out
    assert "556" in out and "Fresh 556" in out
