"""The ``fastsasrec`` command: the demo, train -> recommend -> evaluate on a small event
log, and a clear message with exit status 2 for every kind of bad input."""
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import fastsasrec
from fastsasrec.cli import main

N_ITEMS = 120  # more than the 100 negatives of the sampled protocol


def chain_events(n_users=150, seed=0, item=lambda k: 100 + k, user=lambda u: u, when=lambda t: t):
    """An event log whose users walk a cycle of N_ITEMS items (k is followed by k + 1),
    rows shuffled so that only the time column gives the order."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        start = int(rng.integers(0, N_ITEMS))
        t0 = int(rng.integers(0, 10**6))
        for k in range(int(rng.integers(5, 9))):
            rows.append((user(u), item((start + k) % N_ITEMS), when(t0 + 60 * k)))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


TRAIN_ARGS = ["--epochs", "40", "--factors", "16", "--max-seq", "8", "--dropout", "0.1", "--lr", "0.005",
              "--seed", "3", "--threads", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(events csv, model file) of a model trained by the command on the chain log."""
    d = tmp_path_factory.mktemp("cli")
    events, model = d / "events.csv", d / "model.fsr"
    chain_events().to_csv(events, index=False)
    assert main(["train", str(events), "-o", str(model)] + TRAIN_ARGS) == 0
    return events, model


def run(capsys, argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def recommended(out):
    """(ids as strings, scores) from the output of ``recommend``."""
    rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
    return [r[1] for r in rows], [float(r[2]) for r in rows]


# ----------------------------------------------------------------------------- demo
def test_demo_prints_metrics_and_the_store_use_cases(capsys):
    code, out, err = run(capsys, ["demo", "--sessions", "1500", "--epochs", "12", "--seed", "1", "--threads", "1"])
    assert code == 0, err
    assert "HR@10" in out and "coverage@10" in out and "most popular" in out
    assert "leave-one-out, full catalogue ranking" in out and "new visitors" in out
    lines = {l.split()[0]: l.split() for l in out.splitlines() if l.strip().startswith(("SASRec", "most"))}
    sasrec_hr = float(lines["SASRec"][1])
    pop_hr = float(lines["most"][2])
    # the journeys make the next product predictable: far above the popularity baseline
    assert sasrec_hr > 5 * pop_hr and sasrec_hr > 0.3, out
    # (a) the widget
    assert "based on what you viewed" in out and "next:" in out and "similar to" in out
    # (b) re-engagement: one product featured per lapsed shopper
    assert out.count("feature:") == 3
    # (c) the upsell leaves out the cart
    upsell = next(l for l in out.splitlines() if l.strip().startswith("upsell:"))
    assert "Acme espresso machine" not in upsell and "Acme burr grinder" not in upsell
    assert len(upsell.split(",")) == 3
    # (d) the focused session scores above the scattered one
    focus = [float(x) for x in re.findall(r"focus ([0-9.]+)", out)]
    assert len(focus) == 2 and all(0.0 <= f <= 1.0 for f in focus)
    assert focus[0] > focus[1], out
    # (e) new products, known by their category and brand alone, each found for its session
    new = [l for l in out.splitlines() if "new for you:" in l]
    assert "(e) new products" in out and len(new) == 2, out
    assert "Acme espresso machine" in new[0] and new[0].split("new for you: ")[1].startswith("Acme cold brew kit")
    assert "Vela tent" in new[1] and new[1].split("new for you: ")[1].startswith("Vela ultralight tent")


def test_demo_rejects_bad_arguments(capsys):
    assert main(["demo", "--sessions", "0"]) == 2
    assert "n_sessions must be a positive integer" in capsys.readouterr().err
    assert main(["demo", "--download"]) == 2
    assert "--download goes with --movielens" in capsys.readouterr().err


def test_demo_on_a_local_movielens_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    rows = [f"{u}\t{int(rng.integers(1, 41))}\t{int(rng.integers(1, 6))}\t{880000000 + 100 * u + t}"
            for u in range(1, 41) for t in range(8)]
    (folder / "u.data").write_text("\n".join(rows) + "\n")
    (folder / "u.item").write_bytes("\n".join(f"{i}|Film {i} (199{i % 10})|01-Jan-1995||http://x|0|1"
                                              for i in range(1, 41)).encode("latin-1") + b"\n")
    code, out, err = run(capsys, ["demo", "--movielens", folder, "--epochs", "2", "--threads", "1"])
    assert code == 0, err
    assert "MovieLens 100K: 320 ratings of 40 movies by 40 users" in out
    assert "new users" in out and "based on what you watched" in out and "Film " in out
    assert out.count("feature:") == 3 and "upsell:" in out and out.count("focus ") == 2


def test_demo_names_the_missing_movielens_folder(tmp_path, capsys):
    code, _, err = run(capsys, ["demo", "--movielens", tmp_path / "nowhere"])
    assert code == 2
    assert "MovieLens 100K not found" in err and "nowhere" in err


# ----------------------------------------------------------------------------- round trip
def test_train_recommend_evaluate_round_trip(trained, capsys):
    events, model = trained
    assert os.path.getsize(model) > 0
    code, out, err = run(capsys, ["recommend", model, "--session", "110,111,112", "-n", "4"])
    assert code == 0, err
    ids, scores = recommended(out)
    assert out.splitlines()[0].split() == ["rank", "item", "score"]
    assert ids[0] == "113" and len(ids) == 4  # the next step of the chain
    assert scores == sorted(scores, reverse=True)
    assert not {"110", "111", "112"} & set(ids)
    # --exclude (a cart) and --keep-seen
    code, out, _ = run(capsys, ["recommend", model, "--session", "110, 111, 112", "-n", "3", "--exclude", "113"])
    assert code == 0 and "113" not in recommended(out)[0]
    code, out, _ = run(capsys, ["recommend", model, "--session", "110,111,112", "-n", str(N_ITEMS), "--keep-seen"])
    assert code == 0 and "110" in recommended(out)[0]

    code, out, err = run(capsys, ["evaluate", model, events, "-k", "5"])
    assert code == 0, err
    assert "150 users' last items" in out and "leave-one-out, full catalogue ranking" in out
    metrics = {m: (float(a), float(b)) for m, a, b in
               re.findall(r"^\s+(\S+@5)\s+([0-9.]+)\s+([0-9.]+)$", out, flags=re.M)}
    assert set(metrics) == {"HR@5", "NDCG@5", "MRR@5", "MAP@5", "coverage@5", "pop_percentile@5"}
    assert metrics["HR@5"][0] > 0.8, out
    # the most-popular baseline beside it, by the same protocol: far below on the chain
    assert "most popular" in out.splitlines()[1] and metrics["HR@5"][1] < 0.3, out
    code, out, err = run(capsys, ["evaluate", model, events, "--protocol", "sampled"])
    assert code == 0, err
    assert "sampled: 100 negatives" in out and "HR@10" in out


def _table(out):
    """{metric@k: (model, most popular)} from the output of ``evaluate``."""
    return {m: (float(a), float(b)) for m, a, b in
            re.findall(r"^\s+(\S+@\d+)\s+([0-9.]+)\s+([0-9.]+)$", out, flags=re.M)}


def test_evaluate_at_several_k_and_split_by_time(trained, capsys):
    from fastsasrec import SASRec
    from fastsasrec.metrics import popular_baseline, split_by_time

    events, model = trained
    code, out, err = run(capsys, ["evaluate", model, events, "--k", "5,10,20"])
    assert code == 0, err
    table = _table(out)
    assert {f"{m}@{k}" for m in ("HR", "NDCG", "MRR", "MAP", "coverage", "pop_percentile")
            for k in (5, 10, 20)} == set(table)
    assert table["HR@5"][0] <= table["HR@10"][0] <= table["HR@20"][0]

    code, out, err = run(capsys, ["evaluate", model, events, "-k", "10", "--split-time", "0.8"])
    assert code == 0, err
    table = _table(out)
    assert "Recall@10" in table and "left out:" in out and "ranked from their events before it" in out
    # the same figures as the Python calls on the same split
    m = SASRec.load(model)
    _, test = split_by_time(pd.read_csv(events), at=0.8)
    want = m.evaluate(test.contexts, k=10, targets=test.targets)
    pop = popular_baseline(m, test.contexts, k=10, targets=test.targets)
    assert f"{want['n']:,} users' events from {test.at} on" in out
    for key in ("HR@10", "Recall@10", "NDCG@10", "MAP@10"):
        assert table[key] == (round(want[key], 4), round(pop[key], 4)), key
    assert want["Recall@10"] < want["HR@10"]


@pytest.mark.parametrize("argv, message", [
    (["--k", "5,x"], "--k must be positive integers separated by commas, like 5,10,20, got '5,x'"),
    (["-k", "0"], "--k must be positive integers separated by commas, like 5,10,20, got '0'"),
    (["--split-time", "0.5", "--no-time"], "--split-time needs the time column: drop --no-time"),
    (["--split-time", "0.5", "--protocol", "sampled"], "--split-time ranks the full catalogue"),
    (["--split-time", "99999999"], "--split-time 99999999: at=99999999 leaves no event on one side"),
    (["--split-time", "tomorrow"], "--split-time tomorrow: at must be a share of the events in (0, 1)"),
])
def test_evaluate_refuses_bad_cutoffs_and_split_times(trained, capsys, argv, message):
    events, model = trained
    code, _, err = run(capsys, ["evaluate", model, events, *argv])
    assert code == 2 and message in err, err


def test_recommend_notes_unknown_items(trained, capsys):
    _, model = trained
    code, out, err = run(capsys, ["recommend", model, "--session", "110,111,99999", "-n", "2"])
    assert code == 0 and "99999" in err and "ignored" in err
    assert recommended(out)[0][0] == "112"
    code, out, err = run(capsys, ["recommend", model, "--session", "99999", "-n", "2"])
    assert code == 0 and "most popular" in err and len(recommended(out)[0]) == 2


def test_string_ids_and_date_strings(tmp_path, capsys):
    df = chain_events(n_users=60, item=lambda k: f"p{k:03d}", user=lambda u: f"u{u}",
                      when=lambda t: str(pd.Timestamp("2024-03-01") + pd.Timedelta(seconds=t)))
    events, model = tmp_path / "events.csv", tmp_path / "m.fsr"
    df.rename(columns={"user_id": "visitor", "item_id": "sku", "timestamp": "at"}).to_csv(events, index=False)
    cols = ["--user-col", "visitor", "--item-col", "sku", "--time-col", "at"]
    code, out, err = run(capsys, ["train", events, "-o", model, *cols, "--epochs", "30", "--factors", "16",
                                  "--max-seq", "8", "--dropout", "0.1", "--lr", "0.005", "--threads", "1", "--loss", "softmax"])
    assert code == 0, err
    assert "60 users" in out and "softmax loss" in out
    code, out, err = run(capsys, ["recommend", model, "--session", "p010,p011,p012", "-n", "3"])
    assert code == 0, err
    assert recommended(out)[0][0] == "p013"
    code, out, err = run(capsys, ["recommend", model, "--session", "p011,p012,p0120", "-n", "1"])
    assert code == 0 and "ignored: p0120" in err and recommended(out)[0] == ["p013"]
    code, out, err = run(capsys, ["evaluate", model, events, *cols])
    assert code == 0, err
    assert "60 users' last items" in out
    # a split time with a zone is the instant it names, and is printed in UTC: here the time
    # of one user's third event, written two hours ahead in +02:00
    third = pd.Timestamp(df[df.user_id == "u0"].timestamp.sort_values().iloc[2])
    at = (third + pd.Timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00")
    code, out, err = run(capsys, ["evaluate", model, events, *cols, "--split-time", at])
    assert code == 0, err
    assert f"events from {third:%Y-%m-%d %H:%M:%S} UTC on" in out, out
    # a time inside the log but inside no user's history (the middle of the longest quiet
    # spell: each user's events span minutes) says so
    times = pd.to_datetime(df.timestamp).sort_values().reset_index(drop=True)
    gap = times.diff().idxmax()
    quiet = (times[gap - 1] + (times[gap] - times[gap - 1]) / 2).floor("s")
    code, out, err = run(capsys, ["evaluate", model, events, *cols, "--split-time", str(quiet)])
    assert code == 2 and f"no user has events both before and after {quiet} UTC" in err, err


def test_no_time_column_keeps_file_order(tmp_path, capsys):
    df = chain_events(n_users=40).sort_values(["user_id", "timestamp"]).drop(columns="timestamp")
    events, model = tmp_path / "events.csv", tmp_path / "m.fsr"
    df.to_csv(events, index=False)
    code, out, err = run(capsys, ["train", events, "-o", model, "--no-time", "--epochs", "1", "--factors", "8",
                                  "--threads", "1"])
    assert code == 0, err
    code, out, err = run(capsys, ["evaluate", model, events, "--no-time"])
    assert code == 0 and "in file order" in out, err


def test_parquet_round_trip(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    events, model = tmp_path / "events.parquet", tmp_path / "m.fsr"
    chain_events(n_users=40).to_parquet(events)
    code, out, err = run(capsys, ["train", events, "-o", model, "--epochs", "1", "--factors", "8", "--threads", "1"])
    assert code == 0, err
    code, out, err = run(capsys, ["evaluate", model, events])
    assert code == 0, err


def test_python_dash_m_runs_the_command(tmp_path):
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(fastsasrec.__file__))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-m", "fastsasrec", "recommend", str(tmp_path / "none.fsr"),
                           "--session", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "MODEL file" in proc.stderr and "does not exist" in proc.stderr


# ----------------------------------------------------------------------------- errors
def test_missing_columns_are_named_with_the_ones_present(tmp_path, capsys):
    events = tmp_path / "events.csv"
    chain_events(n_users=5).rename(columns={"item_id": "product"}).to_csv(events, index=False)
    code, _, err = run(capsys, ["train", events, "-o", tmp_path / "m.fsr"])
    assert code == 2
    assert "'item_id' (--item-col)" in err and "user_id, product, timestamp" in err
    code, _, err = run(capsys, ["train", events, "-o", tmp_path / "m.fsr", "--item-col", "product",
                                "--user-col", "visitor", "--time-col", "ts"])
    assert code == 2
    assert "'visitor' (--user-col)" in err and "'ts' (--time-col)" in err
    assert not os.path.exists(tmp_path / "m.fsr")


def test_empty_files(tmp_path, capsys):
    empty, header = tmp_path / "empty.csv", tmp_path / "header.csv"
    empty.write_text("")
    header.write_text("user_id,item_id,timestamp\n")
    code, _, err = run(capsys, ["train", empty, "-o", tmp_path / "m.fsr"])
    assert code == 2 and "is empty" in err and "empty.csv" in err
    code, _, err = run(capsys, ["train", header, "-o", tmp_path / "m.fsr"])
    assert code == 2 and "has no rows" in err


def test_nonexistent_or_unsupported_events(trained, tmp_path, capsys):
    _, model = trained
    for argv in (["train", tmp_path / "nope.csv", "-o", tmp_path / "m.fsr"],
                 ["evaluate", model, tmp_path / "nope.csv"]):
        code, _, err = run(capsys, argv)
        assert code == 2 and "EVENTS file" in err and "nope.csv" in err and "does not exist" in err
    other = tmp_path / "events.json"
    other.write_text("{}")
    code, _, err = run(capsys, ["train", other, "-o", tmp_path / "m.fsr"])
    assert code == 2 and ".csv or .parquet" in err
    code, _, err = run(capsys, ["train", tmp_path, "-o", tmp_path / "m.fsr"])
    assert code == 2 and "is a folder" in err


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, capsys, monkeypatch):
    events = tmp_path / "events.parquet"
    events.write_bytes(b"PAR1 not really")

    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import fails
    code, _, err = run(capsys, ["train", events, "-o", tmp_path / "m.fsr"])
    assert code == 2 and "needs pyarrow" in err and "pip install pyarrow" in err


def test_bad_time_and_id_values(tmp_path, capsys):
    events = tmp_path / "events.csv"
    df = chain_events(n_users=5)
    df["timestamp"] = "soon"
    df.to_csv(events, index=False)
    code, _, err = run(capsys, ["train", events, "-o", tmp_path / "m.fsr"])
    assert code == 2 and "'timestamp' (--time-col)" in err
    # One bad date among good ones: its row and value, and no advice about pandas' arguments.
    df = chain_events(n_users=5)
    df["timestamp"] = pd.to_datetime(df["timestamp"], unit="s").astype(str)
    df.loc[7, "timestamp"] = "not a time"
    df.to_csv(events, index=False)
    code, _, err = run(capsys, ["train", events, "-o", tmp_path / "m.fsr"])
    assert code == 2 and f"row 7 is 'not a time', not a date written as the first row's ({df['timestamp'][0]!r})" in err
    assert "format=" not in err and len(err.strip().splitlines()) == 1
    df = chain_events(n_users=5).astype({"item_id": float})
    df.loc[3, "item_id"] = np.nan
    df.to_csv(events, index=False)
    code, _, err = run(capsys, ["train", events, "-o", tmp_path / "m.fsr"])
    assert code == 2 and "item_id" in err and "missing value" in err


def test_output_folder_must_exist(trained, tmp_path, capsys):
    events, _ = trained
    code, _, err = run(capsys, ["train", events, "-o", tmp_path / "no" / "such" / "m.fsr"])
    assert code == 2 and "--output" in err and "does not exist" in err


def test_unreadable_or_foreign_model_files(trained, tmp_path, capsys):
    events, _ = trained
    foreign = tmp_path / "notes.fsr"
    foreign.write_text("not a model")
    code, _, err = run(capsys, ["recommend", foreign, "--session", "1,2"])
    assert code == 2 and "cannot load MODEL" in err and "notes.fsr" in err
    code, _, err = run(capsys, ["evaluate", foreign, events])
    assert code == 2 and "cannot load MODEL" in err
    code, _, err = run(capsys, ["recommend", tmp_path / "missing.fsr", "--session", "1,2"])
    assert code == 2 and "MODEL file" in err and "missing.fsr" in err and "does not exist" in err


@pytest.mark.parametrize("session, message", [
    ("", "comma-separated item ids"),
    ("110,,112", "comma-separated item ids"),
    ("110,abc", "'abc' is not an integer"),
    ("1.5", "'1.5' is not an integer"),
])
def test_bad_session(trained, capsys, session, message):
    _, model = trained
    code, _, err = run(capsys, ["recommend", model, "--session", session])
    assert code == 2 and "--session" in err and message in err


def test_candidates_ranks_only_those(trained, capsys):
    _, model = trained
    code, out, _ = run(capsys, ["recommend", model, "--session", "110,111", "-n", "50"])
    full_ids, full_sc = recommended(out)
    code, out, err = run(capsys, ["recommend", model, "--session", "110,111", "-n", "3",
                                  "--candidates", "125,112,130,424242"])
    assert code == 0 and "note: --candidates not in the model's catalogue, ignored: 424242" in err
    ids, sc = recommended(out)
    want = [(i, x) for i, x in zip(full_ids, full_sc) if i in {"125", "112", "130"}][:3]
    assert list(zip(ids, sc)) == want
    code, _, err = run(capsys, ["recommend", model, "--session", "110", "--candidates", "5,6"])
    assert code == 2 and "--candidates: none of '5,6' is in the model's catalogue" in err
    code, _, err = run(capsys, ["recommend", model, "--session", "110", "--new-products"])
    assert code == 2 and "--new-products: every item of this model has training events" in err
    code, _, err = run(capsys, ["recommend", model, "--session", "110", "--candidates", "112", "--new-products"])
    assert code == 2 and "give one" in err


def test_bad_arguments_are_usage_errors(trained, capsys):
    _, model = trained
    code, _, err = run(capsys, ["recommend", model])
    assert code == 2 and "--session" in err
    code, _, err = run(capsys, ["recommend", model, "--session", "110", "-n", "0"])
    assert code == 2 and "argument -n: must be a whole number >= 1, got '0'" in err
    code, _, err = run(capsys, ["score", model, "x.csv", "-o", "y.csv", "-n", "2.5"])
    assert code == 2 and "argument -n: must be a whole number >= 1, got '2.5'" in err
    code, _, err = run(capsys, ["evaluate", model, "x.csv", "--protocol", "paper"])
    assert code == 2 and "invalid choice" in err
    code, out, _ = run(capsys, ["--help"])
    assert code == 0 and "demo" in out and "evaluate" in out


def test_train_with_auto_settings_says_what_it_chose(tmp_path, capsys):
    events, model = tmp_path / "events.csv", tmp_path / "auto.fsr"
    chain_events(n_users=300, seed=4).to_csv(events, index=False)
    code, out, err = run(capsys, ["train", events, "-o", model, "--factors", "16", "--epochs", "auto",
                                  "--dropout", "auto", "--seed", "3", "--threads", "1", "-v"])
    assert code == 0, err
    chosen = next(line for line in out.splitlines() if line.startswith("chosen from the data:"))
    assert "dropout" in chosen and "max_seq 10" in chosen and "loss softmax" in chosen
    assert "iterations" in chosen and "(epoch kept)" in chosen
    assert "early stopping on a validation slice" in out  # the reasons, with -v
    assert fastsasrec.SASRec.load(model, device="cpu").defaults_["max_seq"]["value"] == 10
    code, out, err = run(capsys, ["train", events, "-o", model, "--epochs", "many"])
    assert code == 2 and "--epochs" in err and "expected int or 'auto', got 'many'" in err


def test_serve_guard_flags_are_checked(capsys, trained):
    """The server's slow-client deadlines and connection cap are flags of `fastsasrec
    serve`, refused before the model is loaded when out of range."""
    _, model = trained
    for flag, value in (("--header-timeout", 0), ("--body-timeout", -1), ("--max-connections", 0)):
        code, _, err = run(capsys, ["serve", model, flag, value])
        assert code == 2 and flag in err and str(value) in err
