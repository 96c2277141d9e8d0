"""The command line with bad model files and bad --output paths: one line on stderr,
``fastsasrec <command>: error: ...``, exit status 2, no traceback, and ``train`` refusing
an output it could not write before it trains."""
import json
import os
import subprocess
import sys
import zipfile

import pytest

import fastsasrec
from fastsasrec import _persist
from fastsasrec.cli import main

from test_cli import chain_events, run
from test_persist import huge, rewrite

FAST = ["--epochs", "1", "--factors", "8", "--max-seq", "5", "--threads", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_files")
    events, model = d / "events.csv", d / "model.fsr"
    chain_events(n_users=40).to_csv(events, index=False)
    assert main(["train", str(events), "-o", str(model)] + FAST) == 0
    return events, model


def one_error_line(command, err):
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fastsasrec {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def cli(*argv, timeout=120):
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(fastsasrec.__file__))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "fastsasrec", *[str(a) for a in argv]], env=env,
                          capture_output=True, text=True, timeout=timeout)


def bad_models(model, d):
    """name -> a damaged or foreign copy of ``model`` in folder d."""
    data = model.read_bytes()
    out = {}
    (d / "truncated.fsr").write_bytes(data[: len(data) // 2])
    out["truncated"] = d / "truncated.fsr"
    (d / "text.fsr").write_text("not a model\n")
    out["text"] = d / "text.fsr"
    out["huge"] = rewrite(model, d / "huge.fsr", edit=huge)
    out["bad_config"] = rewrite(model, d / "cfg.fsr", edit=lambda m: m["engine_config"].update(factors="x"))
    out["bomb"] = rewrite(model, d / "bomb.fsr", compression=zipfile.ZIP_DEFLATED,
                          replace={"params.npy": b"\0" * 20_000_000})
    out["no_sum"] = rewrite(model, d / "sum.fsr", resum=False,
                            edit=lambda m: m["sha256"].update({"params.npy": "0" * 64}))
    (d / "folder.fsr").mkdir()
    out["folder"] = d / "folder.fsr"
    return out


@pytest.mark.parametrize("case", ["truncated", "text", "huge", "bad_config", "bomb", "no_sum", "folder"])
def test_bad_model_files_are_one_line_errors(trained, tmp_path, capsys, case):
    events, model = trained
    path = bad_models(model, tmp_path)[case]
    code, out, err = run(capsys, ["recommend", path, "--session", "100,101"])
    assert code == 2 and out == ""
    line = one_error_line("recommend", err)
    assert "cannot load MODEL" in line and os.path.basename(path) in line
    code, out, err = run(capsys, ["evaluate", path, events])
    assert code == 2 and out == ""
    one_error_line("evaluate", err)


def test_bad_model_file_in_a_fresh_process(trained, tmp_path):
    _, model = trained
    path = bad_models(model, tmp_path)["huge"]
    proc = cli("recommend", path, "--session", "100")
    assert proc.returncode == 2 and proc.stdout == ""
    one_error_line("recommend", proc.stderr)


def test_fifo_model_fails_without_blocking(trained, tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    events, _ = trained
    fifo = tmp_path / "pipe.fsr"
    os.mkfifo(fifo)
    for argv in (["recommend", fifo, "--session", "100"], ["evaluate", fifo, events]):
        proc = cli(*argv, timeout=60)
        assert proc.returncode == 2
        assert "FIFO" in one_error_line(argv[0], proc.stderr)


def test_good_model_still_works(trained, capsys):
    events, model = trained
    code, out, err = run(capsys, ["recommend", model, "--session", "100,101", "--threads", "1"])
    assert code == 0, err
    code, out, err = run(capsys, ["evaluate", model, events])
    assert code == 0, err


def test_bad_threads_for_a_loaded_model(trained, capsys):
    _, model = trained
    code, _, err = run(capsys, ["recommend", model, "--session", "100", "--threads", "-1"])
    assert code == 2 and "--threads must be >= 0" in one_error_line("recommend", err)


# ----------------------------------------------------------------------------- train -o
def test_output_is_a_folder_fails_before_training(trained, tmp_path, capsys, monkeypatch):
    events, _ = trained
    calls = []
    monkeypatch.setattr(fastsasrec.SASRec, "fit", lambda *a, **k: calls.append(1))
    code, out, err = run(capsys, ["train", events, "-o", tmp_path] + FAST)
    assert code == 2 and out == "" and not calls
    assert "is a folder" in one_error_line("train", err)


def test_output_in_a_missing_or_unwritable_folder_fails_before_training(trained, tmp_path, capsys,
                                                                        monkeypatch):
    events, _ = trained
    calls = []
    monkeypatch.setattr(fastsasrec.SASRec, "fit", lambda *a, **k: calls.append(1))
    code, out, err = run(capsys, ["train", events, "-o", tmp_path / "no" / "m.fsr"] + FAST)
    assert code == 2 and "does not exist" in one_error_line("train", err)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    code, out, err = run(capsys, ["train", events, "-o", a_file / "m.fsr"] + FAST)
    assert code == 2 and "is not a folder" in one_error_line("train", err)
    if os.path.isdir("/proc/self"):  # a folder that takes no new file, even for root
        code, out, err = run(capsys, ["train", events, "-o", "/proc/self/m.fsr"] + FAST)
        assert code == 2 and "cannot write --output" in one_error_line("train", err)
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            code, out, err = run(capsys, ["train", events, "-o", ro / "m.fsr"] + FAST)
            assert code == 2 and "cannot write --output" in one_error_line("train", err)
        finally:
            ro.chmod(0o700)
    assert not calls
    assert sorted(os.listdir(tmp_path)) == ["file.txt"] + (["ro"] if (tmp_path / "ro").exists() else [])


def test_train_through_a_symlink_keeps_it(trained, tmp_path, capsys):
    events, _ = trained
    (tmp_path / "v1.fsr").write_bytes(b"old")
    link = tmp_path / "current.fsr"
    link.symlink_to("v1.fsr")
    code, out, err = run(capsys, ["train", events, "-o", link] + FAST)
    assert code == 0, err
    assert link.is_symlink()
    meta = json.loads(zipfile.ZipFile(tmp_path / "v1.fsr").read(_persist.HEADER))
    assert meta["format"] == "fastsasrec"
