"""Every op of cpp/include/fastsasrec/ops.def has a float64 reference of the same name in
tests/reference/ops.py and a test in tests/test_ops*.py that calls it, save the ops listed
below with the reason each needs no reference (or no test) and the check that stands in
for it.  Read from the sources alone: no build of the engine is needed."""
import ast
import glob
import os
import re

import pytest

from reference import ops as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS_DEF = os.path.join(ROOT, "cpp", "include", "fastsasrec", "ops.def")
# The op tests: test_ops.py, and test_ops_<stem>.py for ops tested in a file of their own.
TEST_OPS_FILES = sorted(glob.glob(os.path.join(ROOT, "tests", "test_ops*.py")))

# Ops without a float64 reference, and what checks them instead (each claim is checked by
# test_exemptions_hold below).
NO_REFERENCE = {
    # A copy: test_gather_rows compares it with numpy's fancy indexing, bit for bit.
    "gather_rows": "a copy",
    # Inference attention (one query a sequence, no dropout): test_attention_last_forward
    # compares it with the last rows of the reference's attention_forward.
    "attention_last_forward": "checked against attention_forward's last rows",
    # The packed layout of E that the CPU's topk reads (the CUDA backend packs nothing):
    # test_topk packs it and checks topk's ids and scores against the reference's topk,
    # the same with and without the table, and with the fp32 and the int8 screens.
    "score_table_size": "a packed layout of E, checked through topk",
    "score_table_pack": "a packed layout of E, checked through topk",
}
# Sizes, not maths: how many floats of workspace the op beside them takes.  Their values
# are used by the tests of those ops (which poison the workspace, so an op that reads
# workspace it has not written fails), but need neither a reference nor a test of their own.
WORKSPACE = re.compile(r"_workspace$")


def engine_ops():
    """The op names of ops.def, in order."""
    with open(OPS_DEF) as f:
        text = re.sub(r"//[^\n]*", "", f.read())
    names = re.findall(r"FSR_OP\(\s*[\w:]+\s*,\s*(\w+)\s*,", text)
    assert names, f"no FSR_OP entry found in {OPS_DEF}"
    return names


def reached_calls(path):
    """{test function: every `ops.<name>` and `R.<name>` it calls, itself or through the
    module's own functions it calls (at any depth)}."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    direct, callees = {}, {}
    for name, fn in funcs.items():
        direct[name], callees[name] = set(), set()
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call):
                continue
            f_ = node.func
            if isinstance(f_, ast.Attribute) and isinstance(f_.value, ast.Name) \
                    and f_.value.id in ("ops", "R"):
                direct[name].add(f"{f_.value.id}.{f_.attr}")
            elif isinstance(f_, ast.Name) and f_.id in funcs:
                callees[name].add(f_.id)

    def reach(name, seen):
        if name in seen:
            return set()
        seen.add(name)
        out = set(direct[name])
        for c in callees[name]:
            out |= reach(c, seen)
        return out

    return {name: reach(name, set()) for name in funcs if name.startswith("test_")}


OPS = engine_ops()
TESTS = {}
for _path in TEST_OPS_FILES:
    TESTS.update({f"{os.path.basename(_path)}::{t}": r for t, r in reached_calls(_path).items()})


def _tests_calling(*calls):
    """The tests (by name, without their file) that call all of `calls`."""
    return sorted(t.split("::")[1] for t, reached in TESTS.items() if set(calls) <= reached)


@pytest.mark.parametrize("name", OPS)
def test_op_has_a_reference(name):
    if WORKSPACE.search(name) or name in NO_REFERENCE:
        return
    assert callable(getattr(R, name, None)), (
        f"ops.def's {name} has no float64 reference: add tests/reference/ops.py:{name} "
        "(the engine's name), or an exemption with its reason in tests/test_op_coverage.py")


@pytest.mark.parametrize("name", OPS)
def test_op_has_a_test(name):
    if WORKSPACE.search(name):
        return
    assert _tests_calling(f"ops.{name}"), (
        f"no test in tests/test_ops*.py calls ops.{name}(...)")


def test_exemptions_hold():
    """Each exemption names an op of ops.def that has no reference (a stale one is taken
    out), and the check it names in place of the reference is there."""
    for name in NO_REFERENCE:
        assert name in OPS, f"exemption {name} is not an op of ops.def"
        assert not hasattr(R, name), f"{name} has a reference now: take it out of NO_REFERENCE"
    assert "test_gather_rows" in _tests_calling("ops.gather_rows")
    assert "test_attention_last_forward" in _tests_calling("ops.attention_last_forward",
                                                          "R.attention_forward")
    assert "test_topk" in _tests_calling("ops.score_table_size", "ops.score_table_pack",
                                        "ops.topk", "R.topk")


def test_the_checks_can_fail(tmp_path):
    """The parsers find what is there and miss what is not: an op without a reference or
    a test is caught."""
    assert len(OPS) >= 20 and "loss_bce" in OPS and "topk" in OPS
    assert {"test_ops.py", "test_ops_feature_bag.py"} <= {os.path.basename(p) for p in TEST_OPS_FILES}
    src = tmp_path / "t.py"
    src.write_text("def helper(ops):\n    ops.topk(1)\n\n"
                   "def test_a(ops):\n    helper(ops)\n    R.topk(2)\n\n"
                   "def test_b(ops):\n    x = ops.uniform\n")
    reached = reached_calls(str(src))
    assert reached == {"test_a": {"ops.topk", "R.topk"}, "test_b": set()}
