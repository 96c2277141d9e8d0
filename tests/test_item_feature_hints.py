"""How a features table was read, told to people: the warnings for a column likely meant
otherwise (numbers among strings, lists or dates in text, a second id), the one-line
summary of a fitted model's features, and the command line's lines for both."""
import warnings

import numpy as np
import pandas as pd
import pytest

from fastsasrec import ItemFeatures, SASRec
from fastsasrec import _features

from test_item_features import CATS, _events_csv, _items_csv, _model, _sessions, _table

ITEMS = [i for c in CATS.values() for i in c]  # 40 items


def _quiet(read):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return read()


def test_numbers_among_strings_and_a_second_id_warn():
    mixed = pd.DataFrame({"price": [float(i) for i in ITEMS]}, index=ITEMS).astype(object)
    mixed.loc[101, "price"] = "cheap"
    with pytest.warns(UserWarning, match=r"column 'price' holds numbers and strings \(item 101: "
                      r"'cheap'\), so it is read as categorical"):
        t = _features.table(mixed)
    assert t.kinds == ("categorical",)
    sku = pd.DataFrame({"sku": [f"SKU-{i}" for i in ITEMS], "category": ["a", "b"] * 20}, index=ITEMS)
    with pytest.warns(UserWarning, match="column 'sku' has a distinct value for each of its 40 items"):
        _features.table(sku)
    # Said to be categorical, or shared by items, or too few rows to tell: no warning.
    _quiet(lambda: ItemFeatures(sku, categorical=["sku"]).table("int"))
    _quiet(lambda: ItemFeatures(mixed, categorical=["price"]).table("int"))
    _quiet(lambda: _features.table(sku.iloc[:10]))
    _quiet(lambda: _features.table(_table(), names="title"))


def _genres(n=40, seed=0):
    """Lists of 2-3 of 8 genres as text: many combinations of few values."""
    rng = np.random.default_rng(seed)
    names = ["Action", "Comedy", "Drama", "Horror", "Romance", "SciFi", "War", "Western"]
    return ["|".join(rng.choice(names, size=int(rng.integers(2, 4)), replace=False)) for _ in range(n)]


def test_lists_in_text_warn_with_the_separator_to_give():
    t = pd.DataFrame({"genres": _genres(), "category": ["a", "b"] * 20}, index=ITEMS)
    with pytest.warns(UserWarning) as caught:
        read = _features.table(t)
    assert read.kinds == ("categorical", "categorical")
    (w,) = [str(c.message) for c in caught]
    n_cells = len(set(t["genres"]))
    assert (f"column 'genres' looks like lists separated by '|': its {n_cells} different cells hold 8 "
            "values once split") in w
    assert "multi={'genres': '|'} (ItemFeatures; --item-list-col genres:|)" in w
    # Told, the column is read as lists, and no warning is left.
    assert _quiet(lambda: ItemFeatures(t, multi={"genres": "|"}).table("int")).kinds[0] == "multi"
    assert _quiet(lambda: ItemFeatures(t, categorical=["genres"]).table("int")).kinds[0] == "categorical"
    # Other separators are found too.
    semi = t.assign(genres=t["genres"].str.replace("|", ";"))
    with pytest.warns(UserWarning, match=r"separated by ';'.*--item-list-col genres:;"):
        _features.table(semi)
    # Not lists: names holding a comma (splitting them makes more values, not fewer), a
    # separator in few cells, too few different cells to tell.
    people = pd.DataFrame({"author": [f"Surname{i}, Given{i}" for i in ITEMS]}, index=ITEMS)
    _quiet(lambda: ItemFeatures(people, categorical=["author"]).table("int"))
    with pytest.warns(UserWarning) as caught:
        _features.table(people)
    assert [str(c.message) for c in caught if "looks like lists" in str(c.message)] == []
    few = pd.DataFrame({"brand": [f"brand{i % 25}" for i in range(39)] + ["A|B"]}, index=ITEMS)
    _quiet(lambda: _features.table(few))
    small = pd.DataFrame({"genres": [f"g{i % 5}|g{(i + 1) % 5}" for i in range(40)]}, index=ITEMS)
    _quiet(lambda: _features.table(small))


def test_dates_in_text_warn_when_shared_by_items_too():
    days = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(40) // 2, unit="D")
    t = pd.DataFrame({"released": days.strftime("%d-%b-%Y"), "category": ["a", "b"] * 20}, index=ITEMS)
    with pytest.warns(UserWarning, match=r"column 'released' holds dates as text \(20 different ones, "
                      r"e\.g\. '01-Jan-2024'\), read as categorical.*time=\['released'\] \(ItemFeatures; "
                      r"--item-time-col released\)"):
        assert _features.table(t).kinds[0] == "categorical"
    assert _quiet(lambda: ItemFeatures(t, time=["released"]).table("int")).kinds[0] == "time"
    _quiet(lambda: ItemFeatures(t, categorical=["released"]).table("int"))
    # Codes with digits are not dates.
    _quiet(lambda: _features.table(pd.DataFrame({"size": [f"size {i % 20}" for i in range(40)]},
                                                 index=ITEMS)))


def test_an_empty_or_constant_column_warns():
    t = pd.DataFrame({"category": ["a", "b"] * 20, "note": [np.nan] * 40, "shop": ["main"] * 40,
                      "tags": [[] for _ in ITEMS]}, index=ITEMS)
    with pytest.warns(UserWarning) as caught:
        _features.table(t)
    said = sorted(str(c.message) for c in caught)
    assert said == ["item_features column 'note' is empty in all its 40 rows: it tells the model nothing; drop it",
                    "item_features column 'shop' holds the same value in all its 40 rows ('main'): it tells "
                    "the model nothing; drop it",
                    "item_features column 'tags' is empty in all its 40 rows: it tells the model nothing; drop it"]
    # One value beside missing cells tells items apart (has it or not): no warning.
    _quiet(lambda: _features.table(t[["category"]].assign(sale=["yes"] + [None] * 39)))
    # partial_fit's new products are a few rows read by the fitted columns: one brand for
    # all of them, or one shared date, is no sign of a bad column, and nothing is said.
    m = _model(iterations=1).fit(_sessions(), item_features=_table(), item_names="title")
    new = pd.DataFrame({"category": ["cat1"] * 3, "tags": [["t1"]] * 3, "price": [3.0] * 3,
                        "title": ["A", "B", "C"]}, index=[555, 556, 557])
    grown = _quiet(lambda: m.partial_fit([[100, 555, 556]], item_features=new, item_names="title"))
    assert {555, 556, 557} <= set(grown.item_ids_.tolist())


def test_a_fitted_models_features_in_one_line():
    # 36 items in the sessions (each category's tenth item in none), 100 and 101 without a
    # row; the table's other four tenth items and 998, 999 are new products.
    m = _model(iterations=1).fit(_sessions(), item_features=_table(extra=[(999, 2), (998, 3)])
                                 .drop(index=[100, 101]), item_names="title")
    assert int((m.popularity_ == 0).sum()) == 6
    line = m.describe_item_features()
    price = m.item_features_[-1]["edges"]
    assert line == ("category (categories, 4 values); tags (lists, 5 values); price (numbers in "
                    f"{len(price) + 1} buckets, edges {price[0]:g} .. {price[-1]:g}); 40 of 42 items "
                    "have a row, 6 of them new products (no event); names from column 'title'")
    with pytest.raises(ValueError, match="fitted without item_features"):
        _model(iterations=1).fit(_sessions(20)).describe_item_features()


def test_the_command_line_says_how_it_read_the_table(tmp_path, capsys):
    from fastsasrec.cli import main

    events, items, model = tmp_path / "events.csv", tmp_path / "items.csv", tmp_path / "m.fsr"
    _events_csv(events, _sessions(200))
    table = _items_csv(items, _table().assign(genres=_genres()))
    args = ["train", str(events), "-o", str(model), "--epochs", "1", "--factors", "16", "--max-seq", "8",
            "--threads", "1", "-q", "--item-features", str(items), "--item-names", "title",
            "--item-list-col", "tags"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    # A warning is one line that names the command, not a source location.
    assert err.startswith("fastsasrec train: warning: item_features column 'genres' looks like lists")
    assert len(err.splitlines()) == 1 and ".py:" not in err
    assert "trained on 200 events" not in out and " 1 epoch in " in out
    assert ("item features: category (categories, 4 values); tags (lists split on '|', 5 values); "
            "price (numbers in ") in out
    assert "genres (categories, " in out
    assert "(ItemFeatures; --item-cat-col genres) to keep it as it is" in err
    assert main(args + ["--item-list-col", "genres"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and "genres (lists split on '|', 8 values); 40 of 40 items have a row" in out
    assert SASRec.load(model).describe_item_features() in out
    # Kept whole, as the warning offers: no warning, the cells as categories; price as codes.
    assert main(args + ["--item-cat-col", "genres", "--item-cat-col", "price"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and f"genres (categories, {len(set(table['genres']))} values)" in out
    assert "price (categories, 40 values)" in out
    assert main(args + ["--item-cat-col", "colour"]) == 2
    assert "categorical: 'colour' is not a feature column of item_features" in capsys.readouterr().err
