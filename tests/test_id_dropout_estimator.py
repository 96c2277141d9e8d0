"""SASRec(id_dropout=...): checked as the engine checks it, given to the engine only with
item features (and written to the model file only when it is not 0), files written before
it load as models trained without it, checkpoints resume bit for bit with it, and the
command line's --id-dropout."""
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from fastsasrec import SASRec
from fastsasrec._params import DEFAULTS
from test_item_features import _events_csv, _items_csv, _model, _sessions, _table


def _header(path):
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("fastsasrec.json"))


def test_bad_values_name_the_parameter():
    with pytest.raises(ValueError, match=r"^id_dropout must be in \[0, 1\), got 1$"):
        SASRec(id_dropout=1.0)
    with pytest.raises(ValueError, match=r"^id_dropout must be a finite number, got 'x'$"):
        SASRec(id_dropout="x")
    with pytest.raises(ValueError, match=r"^id_dropout must be in \[0, 1\), got -0.5$"):
        SASRec().set_params(id_dropout=-0.5)
    assert SASRec().id_dropout == DEFAULTS["id_dropout"]


def test_without_features_it_changes_nothing(tmp_path):
    """Ids alone: the model and its file are those of id_dropout = 0."""
    a = _model(iterations=2, id_dropout=0.5).fit(_sessions(60))
    b = _model(iterations=2, id_dropout=0.0).fit(_sessions(60))
    np.testing.assert_array_equal(a.item_embeddings_, b.item_embeddings_)
    a.save(tmp_path / "a.fsr")
    meta = _header(tmp_path / "a.fsr")
    assert "id_dropout" not in meta["engine_config"] and "id_dropout" not in meta["params"]


def test_with_features_the_engine_drops_ids_and_the_file_says_so(tmp_path):
    table = _table(extra=[(999, 2)])
    off = _model(iterations=3, id_dropout=0.0).fit(_sessions(), item_features=table)
    on = _model(iterations=3, id_dropout=0.5).fit(_sessions(), item_features=table)
    assert not np.allclose(off.item_embeddings_, on.item_embeddings_)
    off.save(tmp_path / "off.fsr")
    on.save(tmp_path / "on.fsr")
    meta_off, meta_on = _header(tmp_path / "off.fsr"), _header(tmp_path / "on.fsr")
    assert "id_dropout" not in meta_off["engine_config"] and meta_off["params"]["id_dropout"] == 0.0
    assert meta_on["engine_config"]["id_dropout"] == 0.5 and meta_on["params"]["id_dropout"] == 0.5
    back = SASRec.load(tmp_path / "on.fsr")
    assert back.get_params()["id_dropout"] == 0.5
    for s in ([300, 301], [999]):
        np.testing.assert_array_equal(back.recommend(s, n=5).scores, on.recommend(s, n=5).scores)


def test_a_file_from_before_id_dropout_loads_as_trained_without_it(tmp_path):
    """A features model's file written before the parameter existed has no id_dropout:
    it trained with none, and loads saying so."""
    m = _model(iterations=1, id_dropout=0.0).fit(_sessions(60), item_features=_table())
    m.save(tmp_path / "m.fsr")
    with zipfile.ZipFile(tmp_path / "m.fsr") as z:
        members = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(members["fastsasrec.json"])
    del meta["params"]["id_dropout"]
    members["fastsasrec.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(tmp_path / "old.fsr", "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    back = SASRec.load(tmp_path / "old.fsr")
    assert back.get_params()["id_dropout"] == 0.0
    np.testing.assert_array_equal(back.item_embeddings_, m.item_embeddings_)


def test_checkpoints_resume_bit_exactly_with_id_dropout(tmp_path):
    table = _table(extra=[(999, 2)])
    whole = _model(iterations=4, id_dropout=0.3).fit(_sessions(), item_features=table)
    ck = tmp_path / "ck.fsr"
    _model(iterations=2, id_dropout=0.3).fit(_sessions(), item_features=table, checkpoint=ck)
    resumed = _model(iterations=4, id_dropout=0.3).fit(_sessions(), item_features=table, resume=ck)
    np.testing.assert_array_equal(whole.item_embeddings_, resumed.item_embeddings_)
    with pytest.raises(ValueError, match=r"id_dropout=0.5 \(checkpoint: 0.3\)"):
        _model(iterations=4, id_dropout=0.5).fit(_sessions(), item_features=table, resume=ck)


def test_the_command_line_takes_id_dropout(tmp_path, capsys):
    from fastsasrec.cli import main

    events, items, model = tmp_path / "events.csv", tmp_path / "items.csv", tmp_path / "m.fsr"
    _events_csv(events, _sessions(100))
    _items_csv(items, _table())
    args = ["--epochs", "1", "--factors", "16", "--max-seq", "8", "--threads", "1", "-q"]
    assert main(["train", str(events), "-o", str(model), "--item-features", str(items),
                 "--item-list-col", "tags", "--id-dropout", "0.4"] + args) == 0
    assert _header(model)["engine_config"]["id_dropout"] == pytest.approx(0.4)
    capsys.readouterr()
    assert main(["train", str(events), "-o", str(model), "--id-dropout", "0.4"] + args) == 2
    assert "--id-dropout 0.4 leaves items to their features: give --item-features" in capsys.readouterr().err
    assert main(["train", str(events), "-o", str(model), "--item-features", str(items),
                 "--id-dropout", "1.5"] + args) == 2
    assert "error: --id-dropout must be in [0, 1), got 1.5" in capsys.readouterr().err  # by its flag
