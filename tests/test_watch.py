"""A fit you can watch: history_ keeps both phases of an "auto" fit, the command's
progress (a live line on a terminal, -v's lines for logs, nothing in a pipe, -q), the
history written as CSV and drawn with the chosen epoch marked."""
import csv
import fcntl
import io
import math
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import numpy as np
import pandas as pd
import pytest

import fastsasrec
from fastsasrec import SASRec, _auto
from fastsasrec._progress import Watch, clock, phase_times
from fastsasrec.cli import main

# Subprocesses import the fastsasrec these tests import (installed, or the tree's with a
# built _core), never the source tree alone.
PKG_PARENT = os.path.dirname(os.path.dirname(fastsasrec.__file__))

SMALL = dict(factors=8, n_layers=1, batch_size=64, num_threads=1, device="cpu", random_state=3)
TRAIN = ["--user-col", "u", "--item-col", "i", "--no-time", "--factors", "8", "--layers", "1",
         "--batch-size", "64", "--threads", "1", "--seed", "3"]


def chains(n=400, n_items=60, seed=0):
    """Sequences walking a cycle of items (k is followed by k + 1): quick to learn."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start, length = int(rng.integers(0, n_items)), int(rng.integers(4, 9))
        out.append([1 + (start + k) % n_items for k in range(length)])
    return out


@pytest.fixture(scope="module")
def auto_fit():
    return SASRec(**SMALL).fit(chains())


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    path = tmp_path_factory.mktemp("watch") / "events.csv"
    rows = [(u, x) for u, s in enumerate(chains(seed=1)) for x in s]
    pd.DataFrame(rows, columns=["u", "i"]).to_csv(path, index=False)
    return str(path)


def command(*args, stderr_fd=None):
    """Runs ``fastsasrec`` in a new process: (status, stdout, stderr or None)."""
    env = dict(os.environ, PYTHONPATH=PKG_PARENT)
    p = subprocess.run([sys.executable, "-m", "fastsasrec", *map(str, args)], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE if stderr_fd is None else stderr_fd,
                       text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def on_terminal(*args, columns=250):
    """Runs ``fastsasrec`` with stderr on a pseudo-terminal ``columns`` wide: (status,
    stdout, what the terminal received)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = dict(os.environ, PYTHONPATH=PKG_PARENT)
    p = subprocess.Popen([sys.executable, "-m", "fastsasrec", *map(str, args)], env=env,
                         stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # the other end closed
            break
        if not data:
            break
        seen += data
    out = p.communicate(timeout=300)[0]
    os.close(master)
    return p.returncode, out.decode(), seen.decode()


# ----------------------------------------------------------------------------- history_
def test_history_keeps_both_phases_of_an_auto_fit(auto_fit):
    h = auto_fit.history_
    phases = [e["phase"] for e in h]
    n_slice = auto_fit.defaults_["iterations"]["epochs_run"]
    kept = auto_fit.defaults_["iterations"]["value"]
    more = auto_fit.best_epoch_ - kept  # the refit: the kept weights, REFIT_SHARE more epochs
    assert more == max(1, math.ceil(_auto.REFIT_SHARE * kept))
    assert phases == ["slice"] * n_slice + ["refit"] * more
    # the kept model's lineage: the slice's epochs 1..kept, then kept+1.. on everything
    assert [e["epoch"] for e in h] == list(range(1, n_slice + 1)) + list(range(kept + 1, kept + more + 1))
    for e in h:
        assert {"phase", "epoch", "loss", "tokens_per_s", "seconds"} <= set(e) and e["seconds"] > 0
    assert all("val_NDCG@10" in e for e in h[:n_slice])
    assert not any("val_NDCG@10" in e for e in h[n_slice:])
    # loss_history_ is the kept model's: the slice's first kept epochs, then the refit's.
    assert auto_fit.loss_history_ == [e["loss"] for e in h[:kept] + h[n_slice:]]
    assert auto_fit.best_epoch_ == kept + more == len(auto_fit.loss_history_)
    watched = [e.get("val_NDCG@10_smoothed", e["val_NDCG@10"]) for e in h[:n_slice]]
    assert kept == 1 + int(np.argmax(watched))


def test_a_fit_without_a_slice_is_one_train_phase():
    m = SASRec(**dict(SMALL, iterations=3)).fit(chains(100))
    assert [(e["phase"], e["epoch"]) for e in m.history_] == [("train", 1), ("train", 2), ("train", 3)]
    m.partial_fit(chains(50, seed=2), epochs=2)
    assert [(e["phase"], e["epoch"]) for e in m.history_][3:] == [("train", 4), ("train", 5)]


@pytest.mark.filterwarnings("ignore:the trained model is worse")
def test_the_slice_history_survives_a_resume_of_the_refit(tmp_path, monkeypatch):
    import shutil

    from fastsasrec import _auto

    monkeypatch.setattr(_auto, "REFIT_SHARE", 0.5)  # a refit of several epochs
    seqs = chains(400, seed=4)
    ck, side = tmp_path / "job.ckpt", tmp_path / "copy.ckpt"

    def copy_in_refit(model, epoch, logs):  # after the refit's first epoch
        if logs["phase"] == "refit" and not side.exists():
            shutil.copy(ck, side)

    whole = SASRec(**SMALL).fit(seqs, checkpoint=ck, callbacks=[copy_in_refit])
    again = SASRec(**SMALL).fit(seqs, checkpoint=tmp_path / "again.ckpt", resume=side)
    np.testing.assert_array_equal(again._engine.get_params(), whole._engine.get_params())
    strip = lambda h: [(e["phase"], e["epoch"], e["loss"]) for e in h]  # noqa: E731
    assert strip(again.history_) == strip(whole.history_)
    assert again.loss_history_ == whole.loss_history_


# ----------------------------------------------------------------------------- the formatter
class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_the_eta_is_exact_for_fixed_epochs_and_a_bound_under_early_stopping(monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    out = FakeTerminal()
    w = Watch(1, "refit", total=10, stream=out)
    for e in (1, 2, 3):
        w.update({"epoch": e, "loss": 1.0, "tokens_per_s": 1000.0, "seconds": 6.0})
    assert out.getvalue().split("\r")[-1].startswith("SASRec refit on everything: epoch 3/10")
    assert "ETA 0:42" in out.getvalue().split("\r")[-1]  # 7 epochs left x 6 s
    out = FakeTerminal()
    w = Watch(1, "slice", total=50, patience=5, stream=out)
    logs = {"epoch": 4, "loss": 1.0, "tokens_per_s": 1000.0, "seconds": 2.0, "val_NDCG@10": 0.25}
    w.update(logs, best=(0.3, 2), since_best=2)
    line = out.getvalue().split("\r")[-1]
    assert "choosing epochs on the held-out slice" in line and "NDCG@10 0.2500 (best 0.3000 at epoch 2)" in line
    assert "ETA <= 1:32 (cap 50 epochs); stops after 5 epochs without gain: 3 left now" in line
    w.close()
    assert out.getvalue().endswith("SASRec choosing epochs on the held-out slice: 1 epochs in 0:02, "
                                   "best NDCG@10 0.3000 at epoch 2\n")


def test_the_live_line_fits_a_narrow_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out = FakeTerminal()
    w = Watch(1, "slice", total=1000, patience=25, stream=out)
    w.update({"epoch": 140, "loss": 7.12345, "tokens_per_s": 123456.0, "seconds": 3.0,
              "val_NDCG@10": 0.1234}, best=(0.125, 120), since_best=20)
    lines = [s.replace("\x1b[K", "") for s in out.getvalue().split("\r") if s.strip("\x1b[K")]
    assert all(len(s) <= 79 for s in lines), lines
    assert "slice epoch 140" in lines[-1] and "ETA <= 43:00" in lines[-1] and "5 to stop" in lines[-1]


def test_the_live_line_keeps_its_eta_whole_at_80_columns_with_a_running_mean(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    out = FakeTerminal()
    w = Watch(1, "slice", total=1000, patience=25, stream=out)
    w.update({"epoch": 30, "loss": 2.67012, "tokens_per_s": 123456.0, "seconds": 2.0,
              "val_NDCG@10": 0.7795, "val_NDCG@10_smoothed": 0.7797}, best=(0.7797, 30), since_best=0)
    line = out.getvalue().split("\r")[-1].replace("\x1b[K", "")
    assert len(line) <= 79 and not line.endswith("...") and line.endswith("25 to stop"), line
    assert "NDCG@10 0.7797 best 0.7797" in line


def test_the_live_line_does_not_flicker_between_layouts(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    # Once a line had to take a narrower layout, a shorter line (tok/s one digit shorter,
    # played here by a wider terminal) keeps it: the layout never jumps back and forth.
    out = FakeTerminal()
    w = Watch(1, "refit", total=60, stream=out)
    starts = []
    for e, cols in ((51, "60"), (52, "300"), (53, "60")):
        monkeypatch.setenv("COLUMNS", cols)
        w.update({"epoch": e, "loss": 2.5, "tokens_per_s": 99_686.0, "seconds": 1.0})
        starts.append(out.getvalue().split("\r")[-1].split(" ")[0])
    assert starts == ["refit"] * 3, starts


def test_plain_lines_and_phase_times():
    out = io.StringIO()  # not a terminal: verbose=1 writes one line per epoch
    w = Watch(1, "train", total=2, stream=out)
    w.update({"epoch": 1, "loss": 0.5, "tokens_per_s": 2e3, "seconds": 0.25})
    w.close()
    assert out.getvalue() == "SASRec train epoch 1/2  loss 0.5000  2,000 tok/s  0.25s\n"
    assert Watch(0, "train", total=2, stream=out).live is False
    assert clock(75) == "1:15" and clock(3725) == "1:02:05"
    h = [{"phase": "slice", "seconds": 1.0}, {"phase": "slice", "seconds": 2.0},
         {"phase": "refit", "seconds": 0.5}]
    assert phase_times(h) == [("slice", 2, 3.0), ("refit", 1, 0.5)]


# ----------------------------------------------------------------------------- the command
def test_a_pipe_gets_only_the_summary_and_history_writes_a_csv(events, tmp_path):
    hist = tmp_path / "h.csv"
    code, out, err = command("train", events, "-o", tmp_path / "m.fsr", "--history", hist, *TRAIN)
    assert code == 0, err
    assert err == ""
    assert "choosing epochs on the held-out slice" in out and "refit on everything" in out
    assert out.startswith("trained on") and "time: " in out and "chosen from the data" in out
    with open(hist, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(hist) as f:
        header = f.readline().strip().split(",")
    assert header[:5] == ["phase", "epoch", "loss", "tokens_per_s", "seconds"]
    assert "val_NDCG@10" in header
    assert {r["phase"] for r in rows} == {"slice", "refit"}
    # The summary's epoch count is the kept model's: the slice's best epochs, then the refit's
    # (the slice's epochs after its best, patience spent, are in the history, not the model).
    m = re.match(r"trained on .*: (\d+) epochs \(the held-out slice's best (\d+), then (\d+) more on "
                 r"everything\) in ", out)
    assert m, out
    total, kept, more = map(int, m.groups())
    assert more == sum(r["phase"] == "refit" for r in rows) and total == kept + more
    assert kept <= sum(r["phase"] == "slice" for r in rows)
    assert all(r["val_NDCG@10"] == "" for r in rows if r["phase"] == "refit")
    assert all(float(r["val_NDCG@10"]) >= 0 for r in rows if r["phase"] == "slice")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_verbose_prints_a_line_per_epoch_in_a_pipe(events, tmp_path):
    code, out, err = command("train", events, "-o", tmp_path / "m.fsr", "--epochs", "3", "-v", *TRAIN)
    assert code == 0, err
    assert [line.split()[:4] for line in err.splitlines()] == [
        ["SASRec", "train", "epoch", f"{e}/3"] for e in (1, 2, 3)]
    assert "\r" not in err


def test_update_shows_its_epochs_with_verbose(events, tmp_path, capsys):
    model = tmp_path / "m.fsr"
    assert main(["train", events, "-o", str(model), "--epochs", "1", *TRAIN]) == 0
    capsys.readouterr()
    args = ["update", str(model), events, "-o", str(model), "--user-col", "u", "--item-col", "i",
            "--no-time", "--epochs", "2", "--threads", "1"]
    assert main(args + ["-v"]) == 0
    err = capsys.readouterr().err
    assert [line.split()[:4] for line in err.splitlines()] == [
        ["SASRec", "train", "epoch", "2/3"], ["SASRec", "train", "epoch", "3/3"]]
    assert main(args) == 0 and capsys.readouterr().err == ""  # not a terminal: nothing


def test_a_terminal_shows_the_phase_the_epoch_and_an_eta(events, tmp_path):
    code, out, seen = on_terminal("train", events, "-o", tmp_path / "m.fsr", *TRAIN)
    assert code == 0, seen
    assert "\r" in seen
    assert "SASRec choosing epochs on the held-out slice: epoch 1 |" in seen
    assert "without gain:" in seen and "left now" in seen and "ETA <= " in seen
    assert re.search(r"SASRec refit on everything: epoch \d+/\d+ \|", seen) and "| ETA " in seen
    assert "time: choosing epochs on the held-out slice" in out
    code, out, seen = on_terminal("train", events, "-o", tmp_path / "m.fsr", "-q", "--epochs", "2", *TRAIN)
    assert code == 0 and seen == "" and out.startswith("trained on")


def test_bad_history_and_verbosity_arguments(events, tmp_path, capsys):
    assert main(["train", events, "-o", str(tmp_path / "m.fsr"), "--history", str(tmp_path), *TRAIN]) == 2
    assert "--history" in capsys.readouterr().err and not (tmp_path / "m.fsr").exists()
    assert main(["train", events, "-o", str(tmp_path / "m.fsr"), "--history", events, *TRAIN]) == 2
    assert "is the EVENTS file" in capsys.readouterr().err
    assert main(["train", events, "-o", str(tmp_path / "m.fsr"), "-q", "-v", *TRAIN]) == 2
    assert "not allowed with" in capsys.readouterr().err


# ----------------------------------------------------------------------------- pictures
def test_import_stays_light():
    code = ("import sys, fastsasrec, fastsasrec.cli, fastsasrec.plot; fastsasrec.cli._build_parser(); "
            "print('matplotlib' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=PKG_PARENT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_without_matplotlib_the_error_names_it(auto_fit, monkeypatch, tmp_path, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with pytest.raises(ImportError, match=r"needs matplotlib.*fastsasrec\[plot\]"):
        auto_fit.plot_history()
    from fastsasrec.plot import write_history

    write_history(auto_fit.history_, tmp_path / "h.csv")
    assert main(["plot", str(tmp_path / "h.csv"), "-o", str(tmp_path / "c.png")]) == 2
    assert "needs matplotlib" in capsys.readouterr().err and not (tmp_path / "c.png").exists()


def vertical_lines(ax):
    return [line.get_xdata()[0] for line in ax.get_lines()
            if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]]


def test_plot_history_marks_the_chosen_epoch(auto_fit, tmp_path):
    pytest.importorskip("matplotlib", reason="plotting needs matplotlib (the plot extra)")
    from matplotlib.figure import Figure

    fig = auto_fit.plot_history(tmp_path / "c.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    kept = auto_fit.best_epoch_
    for ax in fig.axes:
        assert vertical_lines(ax) == [kept]
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert f"chosen: {kept} epochs" in labels
    more = kept - auto_fit.defaults_["iterations"]["value"]
    assert any(t.startswith(f"refit on everything: {more} epochs, ") for t in labels), labels
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_plot_command_draws_a_history_file(auto_fit, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="plotting needs matplotlib (the plot extra)")
    from fastsasrec.plot import chosen_epoch, read_history, write_history

    write_history(auto_fit.history_, tmp_path / "h.csv")
    back = read_history(tmp_path / "h.csv")
    assert [(e["phase"], e["epoch"]) for e in back] == [(e["phase"], e["epoch"]) for e in auto_fit.history_]
    assert chosen_epoch(back) == auto_fit.best_epoch_
    png = tmp_path / "curves.png"
    assert main(["plot", str(tmp_path / "h.csv"), "-o", str(png)]) == 0, capsys.readouterr().err
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert main(["plot", str(tmp_path / "none.csv"), "-o", str(png)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    assert main(["plot", str(tmp_path / "bad.csv"), "-o", str(png)]) == 2
    assert "no rows with epoch and loss columns" in capsys.readouterr().err
