"""The command line at its edges: string ids with item features, an input list that an
output would overwrite, a checkpoint folder checked before training, a picture's format,
ids beyond 64 bits named by their flag, and a reader that goes away (`| head`)."""
import os
import subprocess
import sys

import pandas as pd
import pytest

from fastsasrec import SASRec
from fastsasrec.cli import main
from test_item_features import _events_csv, _items_csv, _sessions, _table

QUICK = ["--epochs", "2", "--factors", "8", "--max-seq", "8", "--threads", "1", "-q"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    _events_csv(d / "ev.csv", _sessions(200))
    assert main(["train", str(d / "ev.csv"), "-o", str(d / "m.fsr"), "--history", str(d / "h.csv")]
                + QUICK) == 0
    return d


def test_string_ids_train_with_item_features(tmp_path, capsys):
    ev = pd.DataFrame([(u, f"p{i}", t) for u, s in enumerate(_sessions(200)) for t, i in enumerate(s)],
                      columns=["user_id", "item_id", "timestamp"])
    ev.to_csv(tmp_path / "ev.csv", index=False)
    items = _table(extra=[(999, 2)])
    items.index = [f"p{i}" for i in items.index]
    items.index.name = "item_id"
    _items_csv(tmp_path / "items.csv", items)
    assert main(["train", str(tmp_path / "ev.csv"), "-o", str(tmp_path / "m.fsr"), "--item-features",
                 str(tmp_path / "items.csv"), "--item-names", "title", "--item-list-col", "tags"]
                + QUICK) == 0, capsys.readouterr().err
    m = SASRec.load(tmp_path / "m.fsr")
    assert m.item_ids_.dtype.kind == "U" and "p999" in m.item_ids_.tolist()
    assert m.item_feature_values("p999")[0] == "category='cat2'"


def test_score_refuses_to_overwrite_a_list_it_reads(files, capsys):
    cands = files / "cands.csv"
    cands.write_text("100\n101\n")
    for flag in ("--candidates", "--denylist"):
        assert main(["score", str(files / "m.fsr"), str(files / "ev.csv"), "-o", str(cands),
                     flag, f"@{cands}", "-q"]) == 2
        assert f"is the {flag} file" in capsys.readouterr().err
    assert cands.read_text() == "100\n101\n"


def test_a_checkpoint_folder_is_checked_before_training(files, capsys):
    for resume in ([], ["--resume"]):
        assert main(["train", str(files / "ev.csv"), "-o", str(files / "x.fsr"), "--checkpoint",
                     str(files / "nodir" / "ck.ckpt")] + resume + QUICK) == 2
        err = capsys.readouterr().err
        assert "the folder of --checkpoint" in err and "training from the start" not in err
    assert not (files / "x.fsr").exists()


def test_plot_names_the_formats_it_writes(files, capsys):
    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
    for out in ("curves", "curves.jpg"):
        assert main(["plot", str(files / "h.csv"), "-o", str(files / out)]) == 2
        assert "must end in .png, .svg or .pdf" in capsys.readouterr().err
    assert main(["plot", str(files), "-o", str(files / "c.png")]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["plot", str(files / "m.fsr"), "-o", str(files / "c.png")]) == 2
    assert "is not text" in capsys.readouterr().err
    assert not any(p.startswith("curves") or p == "c.png" for p in os.listdir(files))


def test_ids_beyond_64_bits_are_named_by_their_flag(files, capsys):
    big = str(2**64)
    assert main(["recommend", str(files / "m.fsr"), "--session", f"{big},100"]) == 2
    assert capsys.readouterr().err.endswith(f"--session: {big} is beyond 64 bits; integer item ids "
                                            "fit in int64\n")
    assert main(["score", str(files / "m.fsr"), str(files / "ev.csv"), "-o", str(files / "o.csv"),
                 "--denylist", big, "-q"]) == 2
    assert f"--denylist: {big} is beyond 64 bits" in capsys.readouterr().err


@pytest.mark.parametrize("flags,said", [
    (["--seed", "-1"], "--seed must be an integer in [0, 2**63)"),
    (["--heads", "3"], "--factors (8) must be divisible by --heads (3)"),
    (["--lr", "-1"], "--lr must be > 0, got -1"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--threads", "-2"], "--threads must be >= 0, got -2"),
    (["--max-seq", "99999999"], "--max-seq must be in 1..65536, got 99999999"),
])
def test_train_names_a_bad_setting_by_its_flag_before_reading(tmp_path, capsys, flags, said):
    # The events file does not exist: the flag is checked first, so its error is the one said.
    assert main(["train", str(tmp_path / "none.csv"), "-o", str(tmp_path / "m.fsr")] + QUICK + flags) == 2
    err = capsys.readouterr().err
    assert said in err, err
    assert not (tmp_path / "m.fsr").exists()


def test_a_closed_pipe_ends_the_command_quietly(files):
    # `true` exits at once, long before the command starts writing: the write finds the
    # pipe closed, as `| head -1` leaves it for a long answer.
    cmd = (f"{sys.executable} -m fastsasrec recommend {files / 'm.fsr'} --session 100,101 -n 30 "
           "| true; exit ${PIPESTATUS[0]}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    got = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=120)
    assert got.stderr == "" and got.returncode == 141


def test_update_lists_new_products_without_events(tmp_path, capsys):
    _events_csv(tmp_path / "ev.csv", _sessions(200))
    _items_csv(tmp_path / "items.csv", _table())
    assert main(["train", str(tmp_path / "ev.csv"), "-o", str(tmp_path / "m.fsr"), "--item-features",
                 str(tmp_path / "items.csv"), "--item-names", "title", "--item-list-col", "tags"]
                + QUICK) == 0
    _items_csv(tmp_path / "new.csv", _table(extra=[(999, 2)]).loc[[999]])
    capsys.readouterr()
    assert main(["update", str(tmp_path / "m.fsr"), "-o", str(tmp_path / "m2.fsr"), "--item-features",
                 str(tmp_path / "new.csv"), "--item-list-col", "tags", "-q"]) == 0
    assert capsys.readouterr().out.startswith("listed 1 new product (41 items in all); nothing trained")
    before, after = SASRec.load(tmp_path / "m.fsr"), SASRec.load(tmp_path / "m2.fsr")
    assert after.item_ids_[-1] == 999 and after.item_names_[-1] == "New 999"
    assert list(after.loss_history_) == list(before.loss_history_)
    assert main(["update", str(tmp_path / "m.fsr"), "-o", str(tmp_path / "m3.fsr")]) == 2
    assert "give EVENTS (new events to train on), or --item-features ITEMS" in capsys.readouterr().err


def test_integer_ids_with_a_stray_cell_are_read_as_text_with_a_warning(tmp_path, capsys):
    rows = [(u, i, t) for u, s in enumerate(_sessions(100)) for t, i in enumerate(s)]
    ev = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).astype({"item_id": str})
    ev.loc[7, "item_id"] = ev.loc[7, "item_id"] + ".0"  # a float export's cell
    ev.to_csv(tmp_path / "ev.csv", index=False)
    assert main(["train", str(tmp_path / "ev.csv"), "-o", str(tmp_path / "m.fsr")] + QUICK) == 0
    err = capsys.readouterr().err
    assert f"column 'item_id' (--item-col) is read as text ids: at row 7 it holds '{ev.loc[7, 'item_id']}'" in err
    assert SASRec.load(tmp_path / "m.fsr").item_ids_.dtype.kind == "U"
    # Ids that are text through and through are read so without a word.
    ev["item_id"] = "p" + ev["item_id"]
    ev.to_csv(tmp_path / "ev.csv", index=False)
    assert main(["train", str(tmp_path / "ev.csv"), "-o", str(tmp_path / "m.fsr")] + QUICK) == 0
    assert "warning" not in capsys.readouterr().err
