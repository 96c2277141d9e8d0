"""The demo command: trains on built-in synthetic sessions and prints metrics and
recommendations."""
from fastsasrec.cli import main


def test_demo_prints_metrics_and_recommendations(capsys):
    assert main(["demo", "--sessions", "1500", "--epochs", "8", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "HR@10" in out and "most popular" in out
    lines = {l.split()[0]: l.split() for l in out.splitlines() if l.strip().startswith(("SASRec", "most"))}
    sasrec_hr = float(lines["SASRec"][1])
    pop_hr = float(lines["most"][2])
    # the journeys make the next product predictable: far above the popularity baseline
    assert sasrec_hr > 5 * pop_hr and sasrec_hr > 0.3, out
    assert "based on what you viewed" in out and "next:" in out


def test_demo_rejects_bad_arguments(capsys):
    assert main(["demo", "--sessions", "0"]) == 2
    assert "n_sessions must be a positive integer" in capsys.readouterr().err
