"""The notebook users start from (../shared/seed_notebook.py) runs unchanged and prints
a hit rate far above random."""
import os
import re
import subprocess
import sys

import pytest

import fastsasrec
from conftest import ML100K, ROOT

NOTEBOOK = os.path.join(os.path.dirname(ROOT), "shared", "seed_notebook.py")


def test_seed_notebook_runs_unchanged(tmp_path):
    if not os.path.exists(NOTEBOOK):
        pytest.skip(f"the seed notebook is not at {NOTEBOOK}")
    if not os.path.exists(os.path.join(ML100K, "u.data")):
        pytest.skip(f"MovieLens 100K not found at {ML100K}")
    os.symlink(ML100K, tmp_path / "ml-100k")  # the notebook reads ./ml-100k
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(fastsasrec.__file__))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, NOTEBOOK], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for expected in ("Next recommendations", "Re-engagement notifications", "Recovery upsells",
                     "Quality score"):
        assert expected in out, out
    hit = re.search(r"Hit Rate @ 10 \(200 users\): ([0-9.]+)%", out)
    assert hit, out
    # random would be ~0.6% (10 of 1,682 items); a trained model is many times that
    assert float(hit.group(1)) >= 3.0, out
    scores = [float(x) for x in re.findall(r"Quality score: ([0-9.]+)", out)]
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    assert scores[0] > scores[1], "the focused session must score above the scattered one"
