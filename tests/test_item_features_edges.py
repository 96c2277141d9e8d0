"""Item features at their edges: what a fit returns when it is interrupted or validated
with new products in the catalogue, a value partial_fit meets for the first time, a
product listed before any event, and tables and arguments that cannot be read."""
import io
import os
import signal
import warnings

import numpy as np
import pandas as pd
import pytest

from fastsasrec import ItemFeatures, SASRec
from fastsasrec._weights import tensor_rows
from fastsasrec.metrics import split_by_time
from test_item_features import _model, _sessions, _table

NEW = [999, 998]


def _feats(extra=()):
    return _table(extra).drop(columns="title")


def _id_rows(m, ids):
    state = m._fitted()
    return tensor_rows(state.engine, "item_emb")[state.encode(np.asarray(ids))]


def test_an_interrupted_fit_returns_new_products_with_a_zero_id_part():
    def ctrl_c(model, epoch, logs):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = _model(iterations=5).fit(_sessions(), item_features=_feats(extra=[(999, 2), (998, 3)]),
                                     callbacks=[ctrl_c])
    assert m.interrupted_ and len(m.loss_history_) == 2
    # Training pushed these rows down as negatives; the model returned holds them at zero,
    # as an uninterrupted fit does.
    np.testing.assert_array_equal(_id_rows(m, NEW), 0.0)


def test_validation_scores_the_model_the_fit_returns():
    seqs = _sessions()
    train, val = seqs[:-60], seqs[-60:]
    seen = []
    m = _model(iterations=3).fit(train, validation=val, item_features=_feats(extra=[(999, 2), (998, 3)]),
                                 callbacks=[lambda model, epoch, logs: seen.append(
                                     np.abs(_id_rows(model, NEW)).max())])
    assert m.validation_["NDCG@10"] == m.evaluate(val, k=10)["NDCG@10"]
    assert m.history_[-1]["val_NDCG@10"] == m.evaluate(val, k=10)["NDCG@10"]
    assert seen == [0.0, 0.0, 0.0]  # callbacks see that model too
    # and training itself went on with the rows it had: the same fit without validation
    # trains the same weights
    plain = _model(iterations=3).fit(train, item_features=_feats(extra=[(999, 2), (998, 3)]))
    np.testing.assert_array_equal(m.item_embeddings_, plain.item_embeddings_)


def test_a_value_first_seen_by_partial_fit_adds_nothing_and_its_row_stays_zero():
    m = _model(iterations=3).fit(_sessions(), item_features=_feats())
    new = pd.DataFrame({"category": ["garden"], "tags": [["t0"]], "price": [3.0]}, index=[700])
    m.partial_fit([[700, 100, 700, 101]] * 20, epochs=2, item_features=new)
    assert m.item_feature_values(700)[0] == "category=<unknown>"
    state = m._fitted()
    unknown = state.features.space.bases()[0]  # the category column's unknown row
    np.testing.assert_array_equal(tensor_rows(state.engine, "F")[unknown], 0.0)
    # A later product with another unseen category inherits nothing from "garden": its
    # vector is its id (zero) and its known values alone, as if its category were not given.
    later = pd.DataFrame({"category": ["pets", None], "tags": [["t1"], ["t1"]], "price": [3.0, 3.0]},
                         index=[701, 702])
    m.partial_fit([[100, 101, 102]], epochs=1, item_features=later)
    E = m.item_embeddings_
    row = {i: E[list(m.item_ids_).index(i)] for i in (701, 702)}
    assert m.item_feature_values(702)[0] == "category=<missing>"
    assert not np.array_equal(row[701], row[702])  # missing is a learnt value; unknown is nothing
    tags_price = tensor_rows(m._fitted().engine, "F")[[v for v in _bag(m, 701)]].mean(axis=0)
    np.testing.assert_allclose(row[701], tags_price, rtol=1e-6, atol=1e-7)


def _bag(m, item):
    f = m._fitted().features
    i = int(m._fitted().encode(np.asarray([item]))[0])
    bases = f.space.bases()
    return [v for v in f.values[f.offsets[i]:f.offsets[i + 1]].tolist() if v not in bases]


def test_partial_fit_with_no_sequences_lists_products_and_trains_nothing():
    m = _model(iterations=3).fit(_sessions(), item_features=_feats())
    before = m.recommend([100, 101], n=5)
    losses, weights = list(m.loss_history_), m.item_embeddings_.copy()
    m.partial_fit([], item_features=_feats(extra=[(999, 2)]).loc[[999]])
    assert m.item_ids_[-1] == 999 and m.popularity_[-1] == 0
    assert list(m.loss_history_) == losses
    np.testing.assert_array_equal(m.item_embeddings_[:-1], weights)
    np.testing.assert_array_equal(_id_rows(m, [999]), 0.0)
    assert m.recommend([200, 201], n=1, candidates=[999]).ids.tolist() == [999]  # recommendable
    np.testing.assert_array_equal(m.recommend([100, 101], n=5).scores, before.scores)
    with pytest.raises(ValueError, match="sequences is empty"):
        m.partial_fit([])  # no table: nothing to do


def test_partial_fit_reads_a_time_column_empty_in_every_row_as_missing():
    table = _feats().assign(listed=pd.Timestamp("2024-01-01") + pd.to_timedelta(
        np.arange(40) * 7, unit="D"))
    m = _model(iterations=2).fit(_sessions(), item_features=table)
    csv = "item_id,category,tags,price,listed\n999,cat2,t2,5.0,\n"
    m.partial_fit([[200, 201, 202]], item_features=pd.read_csv(io.StringIO(csv), index_col="item_id"),
                  )
    assert m.item_feature_values(999)[-1] == "listed=<missing>"


def test_a_list_column_is_split_by_the_delimiter_the_later_table_gives():
    m = _model(iterations=2).fit(_sessions(), item_features=_feats())  # tags as lists
    csv = "item_id,category,tags,price\n999,cat2,t2|all,5.0\n"
    frame = pd.read_csv(io.StringIO(csv), index_col="item_id")
    m.partial_fit([[200, 201, 202]], item_features=ItemFeatures(frame, multi={"tags": "|"}))
    assert m.item_feature_values(999)[1:3] == ["tags='t2'", "tags='all'"]
    with pytest.raises(ValueError, match="'category' holds lists but the model read it at fit as categories"):
        m.partial_fit([[200, 201, 202]], item_features=ItemFeatures(
            frame.assign(category=["cat2|cat3"]), multi={"tags": "|", "category": "|"}))


@pytest.mark.parametrize("make, match", [
    (lambda t: t.rename(columns={"tags": "category"}), "two columns named 'category'"),
    (lambda t: t.iloc[:0], "item_features has no rows"),
    (lambda t: ItemFeatures(t, multi=["tags"]), r"multi must be a dict of column -> delimiter"),
    (lambda t: ItemFeatures(t, multi={"tags": ""}), r"multi\['tags'\] must be a non-empty delimiter"),
    (lambda t: ItemFeatures(t, multi={"tags": 1}), r"multi\['tags'\] must be a non-empty delimiter"),
    (lambda t: ItemFeatures(t, categorical="category"), r"categorical must be a list of column names, "
                                                         r"got 'category' \(did you mean \['category'\]\?\)"),
    (lambda t: ItemFeatures(t, categorical=["price"], numeric=["price"]),
     "column 'price' is in both categorical and numeric"),
    (lambda t: t.assign(when=[pd.Timestamp("2024-01-01").date()] * len(t)),
     r"ItemFeatures\(time=\['when'\]\)"),
])
def test_tables_and_arguments_that_cannot_be_read_are_refused_by_name(make, match):
    with pytest.raises(ValueError, match=match):
        _model(iterations=1).fit(_sessions(), item_features=make(_feats()))


def test_a_bad_feature_id_is_named_by_its_row():
    table = _feats()
    table.index = table.index.astype(float) + 0.5
    with pytest.raises(ValueError, match=r"item_features' item ids \(the index\), row 0, is the float"):
        _model(iterations=1).fit(_sessions(), item_features=table)


def test_item_names_is_named_as_the_argument_given():
    with pytest.raises(ValueError, match="item_names='nope' is not a column"):
        _model(iterations=1).fit(_sessions(), item_features=_table(), item_names="nope")


def test_split_by_time_reads_any_float_below_one_as_a_share():
    ev = pd.DataFrame({"user_id": [1, 2] * 5, "item_id": range(10), "timestamp": range(10)})
    assert split_by_time(ev, at=np.float32(0.8))[1].at == split_by_time(ev, at=0.8)[1].at == 8


def test_id_dropout_without_item_features_is_said_to_change_nothing():
    with pytest.warns(UserWarning, match=r"id_dropout=0.1 drops items' ids .* this fit has none: it changes nothing"):
        m = _model(iterations=2, id_dropout=0.1).fit(_sessions())
    plain = _model(iterations=2).fit(_sessions())
    np.testing.assert_array_equal(m.item_embeddings_, plain.item_embeddings_)
