"""The model file as untrusted input, and saving it safely: regular files only, every size
bounded by the header before anything is allocated, the header checked against the
engine's layout before the engine is built, unique ids, checksums, no thread count taken
from the file; saved files follow the umask, keep symbolic links and never hold NaN."""
import hashlib
import io
import json
import dataclasses
import os
import stat
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import fastsasrec
from fastsasrec import SASRec, _archive, _core, _persist

SESSIONS = [[1, 2, 3, 4], [2, 3, 4, 5], [5, 4, 3, 2], [1, 3, 5, 2], [4, 1, 2, 3]]
HEADER = "fastsasrec.json"


def fit(**kw):
    params = dict(factors=8, n_layers=1, max_seq=5, iterations=2, verbose=0, num_threads=1, device="cpu")
    params.update(kw)
    return SASRec(**params).fit(SESSIONS)


@pytest.fixture(scope="module")
def model():
    return fit()


@pytest.fixture
def saved(model, tmp_path):
    p = tmp_path / "m.fsr"
    model.save(p)
    return p


def npy(arr):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def members(path):
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def rewrite(src, dst, edit=None, replace=None, compression=zipfile.ZIP_STORED, resum=True, extra=None):
    """dst: src's members, some replaced, the header edited by ``edit(meta)``, the
    checksums recomputed (unless resum is False), with the given compression."""
    data = members(src)
    data.update(replace or {})
    meta = json.loads(data[HEADER])
    if resum and "sha256" in meta:
        meta["sha256"] = {n: hashlib.sha256(data[n]).hexdigest() for n in meta["sha256"]}
    if edit is not None:
        edit(meta)
    data[HEADER] = json.dumps(meta).encode()
    with zipfile.ZipFile(dst, "w", compression) as z:
        for n, b in data.items():
            z.writestr(n, b)
        for n, b in (extra or {}).items():
            z.writestr(n, b)
    return dst


def py(code, timeout=60):
    """Runs Python code in a fresh process (so that a hang is a failed test, not a stuck run)."""
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(fastsasrec.__file__))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout)


def no_engine(monkeypatch):
    """Makes building an engine fail the test: the file must be refused before it."""
    def boom(*a, **k):
        raise AssertionError("_core.Model was constructed")
    monkeypatch.setattr(_core, "Model", boom)


def same_model(a, b):
    assert np.array_equal(a.item_ids, b.item_ids)
    assert np.array_equal(a._engine.get_params(), b._engine.get_params())
    assert a.recommend([1, 2], n=3)[0].tolist() == b.recommend([1, 2], n=3)[0].tolist()


# ----------------------------------------------------------------------------- round trip
def test_round_trip_writes_checksums(model, saved):
    meta = json.loads(members(saved)[HEADER])
    assert sorted(meta["sha256"]) == ["item_ids.npy", "params.npy", "popularity.npy"]
    data = members(saved)
    for name, digest in meta["sha256"].items():
        assert hashlib.sha256(data[name]).hexdigest() == digest
    same_model(model, SASRec.load(saved, device="cpu"))


def test_string_ids_round_trip(tmp_path):
    m = SASRec(factors=8, n_layers=1, max_seq=5, iterations=1, verbose=0, num_threads=1,
               device="cpu").fit([[f"p{i}" for i in s] for s in SESSIONS])
    m.save(tmp_path / "s.fsr")
    back = SASRec.load(tmp_path / "s.fsr", device="cpu")
    assert back.item_ids.dtype.kind == "U" and back.item_ids.tolist() == m.item_ids.tolist()


def test_file_without_checksums_still_loads(model, saved, tmp_path):
    old = rewrite(saved, tmp_path / "old.fsr", edit=lambda m: m.pop("sha256"))
    same_model(model, SASRec.load(old, device="cpu"))


def test_deflated_file_loads(model, saved, tmp_path):
    """A model re-zipped with compression (a weights member that hardly compresses, small
    id arrays) is within the bounds."""
    z = rewrite(saved, tmp_path / "z.fsr", compression=zipfile.ZIP_DEFLATED)
    same_model(model, SASRec.load(z, device="cpu"))


@pytest.mark.parametrize("cfg", [
    dict(n_items=5, factors=8, n_layers=1, max_seq=5),
    dict(n_items=7, factors=6, n_layers=0, max_seq=3),
    dict(n_items=3, factors=8, n_layers=3, max_seq=9, n_heads=2),
    dict(n_items=4, factors=4, n_layers=2, max_seq=2, ffn_factors=12),
])
def test_python_layout_is_the_engines(cfg):
    """The layout the loader checks files against is the one the engine builds."""
    cfg = dict(cfg, loss="softmax")
    engine = _core.Model(cfg, "cpu", threads=1)
    expected, n_params = _persist.layout(cfg)
    assert [(n, int(o), tuple(s)) for n, o, s in engine.tensors()] == expected
    assert engine.n_params == n_params


# ----------------------------------------------------------------------------- not a regular file
def test_fifo_is_refused_without_blocking(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    fifo = tmp_path / "pipe.fsr"
    proc = py(f"""
import os
from fastsasrec import SASRec
os.mkfifo({str(fifo)!r})
try:
    SASRec.load({str(fifo)!r})
except ValueError as e:
    print("ValueError:", e)
""")
    assert proc.returncode == 0, proc.stderr
    assert "ValueError:" in proc.stdout and "FIFO" in proc.stdout and "pipe.fsr" in proc.stdout


def test_device_is_refused_without_reading(tmp_path):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    proc = py("""
from fastsasrec import SASRec
for p in ("/dev/zero", "/dev/null"):
    try:
        SASRec.load(p)
    except ValueError as e:
        print("ValueError:", e)
""")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("character device") == 2


def test_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        SASRec.load(tmp_path)


def test_symlink_to_a_model_loads(model, saved, tmp_path):
    link = tmp_path / "link.fsr"
    link.symlink_to(saved)
    same_model(model, SASRec.load(link, device="cpu"))


# ----------------------------------------------------------------------------- damaged files
def test_truncated_anywhere_is_a_value_error(saved, tmp_path):
    data = saved.read_bytes()
    q = tmp_path / "cut.fsr"
    for cut in sorted(set(np.linspace(0, len(data) - 1, 60).astype(int).tolist())):
        q.write_bytes(data[:cut])
        with pytest.raises(ValueError):
            SASRec.load(q)


def test_flipped_bytes_are_value_errors(saved, tmp_path):
    """Any single damaged byte gives a ValueError (or a model, where the byte is one the
    reader does not use): never a KeyError, TypeError or the zip module's own error."""
    data = saved.read_bytes()
    q = tmp_path / "flip.fsr"
    rng = np.random.default_rng(0)
    for i in sorted(set(rng.integers(0, len(data), 300).tolist()) | set(range(0, 64)) |
                    set(range(len(data) - 120, len(data)))):
        bad = bytearray(data)
        bad[i] ^= 0xFF
        q.write_bytes(bytes(bad))
        try:
            SASRec.load(q, device="cpu")
        except ValueError:
            pass


def test_crc_damage_says_checksum_mismatch(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    i = data.rfind(b"params.npy", 0, data.find(b"PK\x01\x02"))  # the local header's name
    data[i + 200] ^= 0xFF
    q = tmp_path / "crc.fsr"
    q.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        SASRec.load(q)


def test_checksum_mismatch_names_the_member(saved, tmp_path):
    """A weight changed and the zip rebuilt around it (its CRC right): the SHA-256 in the
    header catches it."""
    data = members(saved)
    params = bytearray(data["params.npy"])
    params[-3] ^= 0x01
    q = rewrite(saved, tmp_path / "sum.fsr", replace={"params.npy": bytes(params)}, resum=False)
    with pytest.raises(ValueError, match=r"params\.npy checksum mismatch"):
        SASRec.load(q)


def test_invalid_checksum_field(saved, tmp_path):
    q = rewrite(saved, tmp_path / "s.fsr", edit=lambda m: m.update(sha256=["not", "a", "dict"]))
    with pytest.raises(ValueError, match="sha256"):
        SASRec.load(q)


# ----------------------------------------------------------------------------- sizes bounded first
def huge(meta, n_items=10**9, factors=1024):
    cfg = meta["engine_config"]
    cfg.update(n_items=n_items, factors=factors, loss="sampled_softmax")
    meta["n_items"] = n_items
    meta["tensors"] = [[n, o, list(s)] for n, o, s in _persist.layout(cfg)[0]]


def test_huge_model_in_a_tiny_file_fails_before_the_engine(saved, tmp_path, monkeypatch):
    q = rewrite(saved, tmp_path / "huge.fsr", edit=huge)
    no_engine(monkeypatch)
    with pytest.raises(ValueError, match=r"params\.npy holds \d+ bytes, but the \d+ float32 weights "
                                         r"of the header's engine_config"):
        SASRec.load(q)


def test_member_claiming_bytes_beyond_the_file(saved, tmp_path, monkeypatch):
    """The zip directory itself lies: params.npy says it stores 2 GB."""
    n_items, factors = 500_000, 1000
    q = rewrite(saved, tmp_path / "lie.fsr", edit=lambda m: huge(m, n_items, factors))
    meta = json.loads(members(q)[HEADER])
    want = 128 + 4 * _persist.layout(meta["engine_config"])[1]
    assert want < 2**32
    data = bytearray(q.read_bytes())
    at = data.find(b"PK\x01\x02")
    while data[at + 46:at + 46 + 10] != b"params.npy":
        at = data.find(b"PK\x01\x02", at + 4)
    struct.pack_into("<II", data, at + 20, want, want)  # compressed and uncompressed sizes
    q.write_bytes(bytes(data))
    no_engine(monkeypatch)
    with pytest.raises(ValueError, match="beyond the end of the file"):
        SASRec.load(q)


def test_deflate_bomb_is_refused(saved, tmp_path, monkeypatch):
    bomb = npy(np.zeros(10_000_000, dtype=np.float32))  # 40 MB of zeros, ~40 KB deflated
    q = rewrite(saved, tmp_path / "bomb.fsr", replace={"params.npy": bomb},
                compression=zipfile.ZIP_DEFLATED)
    assert q.stat().st_size < 200_000
    no_engine(monkeypatch)
    with pytest.raises(ValueError, match=r"params\.npy would decompress .* more than 100 times"):
        SASRec.load(q)


def test_oversized_header_member_is_refused(saved, tmp_path):
    q = rewrite(saved, tmp_path / "h.fsr", edit=lambda m: m.update(pad=" " * (17 << 20)),
                compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(ValueError, match="fastsasrec.json"):
        SASRec.load(q)


def with_shape(data, old, new):
    """An .npy member's bytes with its header's shape text replaced, the length kept."""
    n = struct.unpack("<H", data[8:10])[0]
    head = data[10:10 + n].decode("latin1")
    head = head.replace(old, new).rstrip("\n ").ljust(n - 1) + "\n"
    assert len(head) == n
    return data[:10] + head.encode("latin1") + data[10 + n:]


def test_npy_header_claiming_a_huge_shape(model, saved, tmp_path, monkeypatch):
    good = members(saved)["item_ids.npy"]
    # a header claiming 10**12 entries, and no data
    fake = npy(np.zeros(0, dtype=np.int64)).replace(b"(0,)", b"(1000000000000,)")
    q = rewrite(saved, tmp_path / "shape.fsr", replace={"item_ids.npy": fake})
    no_engine(monkeypatch)
    with pytest.raises(ValueError, match=r"item_ids\.npy"):
        SASRec.load(q)
    # the same, of the right byte count, so that only the shape in its header is wrong
    fake = with_shape(good, f"({model.n_items},)", "(999999,)")
    assert len(fake) == len(good)
    q = rewrite(saved, tmp_path / "shape2.fsr", replace={"item_ids.npy": fake})
    with pytest.raises(ValueError, match=r"item_ids\.npy has shape \(999999,\)"):
        SASRec.load(q)


@pytest.mark.parametrize("member, arr, message", [
    ("params.npy", "float64", r"params\.npy holds"),
    ("item_ids.npy", "float", r"item_ids\.npy holds float"),
    ("item_ids.npy", "object", r"item_ids\.npy"),
    ("popularity.npy", "float", r"popularity\.npy holds float"),
])
def test_wrong_dtypes_are_refused(model, saved, tmp_path, member, arr, message):
    data = members(saved)
    if arr == "float64":
        new = npy(np.zeros(model._engine.n_params, dtype=np.float64))
    elif arr == "float":
        new = npy(np.arange(model.n_items, dtype=np.float64))
    else:  # an object array's header (the data is never read)
        new = npy(np.arange(model.n_items, dtype=np.int64)).replace(b"'<i8'", b"'|O' ")
    q = rewrite(saved, tmp_path / "t.fsr", replace={member: new})
    with pytest.raises(ValueError, match=message):
        SASRec.load(q)


def test_tensor_list_must_follow_from_the_config(saved, tmp_path, monkeypatch):
    def shift(meta):
        meta["tensors"][1][1] += 1

    def shape(meta):
        meta["tensors"][0][2] = [meta["tensors"][0][2][0] * 1000, 8]

    def drop(meta):
        meta["tensors"].pop()

    no_engine(monkeypatch)
    for i, edit in enumerate((shift, shape, drop)):
        q = rewrite(saved, tmp_path / f"t{i}.fsr", edit=edit)
        with pytest.raises(ValueError, match="tensor"):
            SASRec.load(q)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["engine_config"].update(factors="8"), "factors"),
    (lambda m: m["engine_config"].update(n_layers=2.5), "n_layers"),
    (lambda m: m["engine_config"].update(bogus=1), "unknown engine_config key 'bogus'"),
    (lambda m: m["engine_config"].update(n_heads=3), "divisible"),
    (lambda m: m["engine_config"].update(n_items=6), "n_items"),
    (lambda m: m.update(n_items=-1), "invalid n_items"),
    (lambda m: m.update(engine_config=[1, 2]), "engine_config must be an object"),
    (lambda m: m.update(params="nope"), "params must be an object"),
    (lambda m: m["params"].update(bogus=1), "invalid parameters"),
    (lambda m: m["params"].update(factors=-3), "invalid parameters"),
    (lambda m: m.update(loss_history="x"), "loss_history"),
    (lambda m: m.update(loss_history=[10**400]), "loss_history"),
    (lambda m: m["engine_config"].update(dropout=10**400), "dropout"),
    (lambda m: m["engine_config"].update(seed=-1), "seed"),
    (lambda m: m.update(item_id_kind="float"), "item_id_kind"),
    (lambda m: m.update(format_version="1"), "format_version"),
])
def test_bad_headers_are_value_errors(saved, tmp_path, edit, message):
    q = rewrite(saved, tmp_path / "h.fsr", edit=edit)
    with pytest.raises(ValueError, match=message):
        SASRec.load(q)


def test_unexpected_or_repeated_members(saved, tmp_path):
    q = rewrite(saved, tmp_path / "x.fsr", extra={"evil.npy": b"x"})
    with pytest.raises(ValueError, match="unexpected zip member 'evil.npy'"):
        SASRec.load(q)
    q = tmp_path / "dup.fsr"
    with pytest.warns(UserWarning):  # the zip module warns about the repeated name
        rewrite(saved, q, extra={"params.npy": members(saved)["params.npy"]})
    with pytest.raises(ValueError, match="more than once"):
        SASRec.load(q)
    q = tmp_path / "many.fsr"
    with zipfile.ZipFile(q, "w") as z:
        for i in range(100):
            z.writestr(f"m{i}", b"")
    with pytest.raises(ValueError, match="not a fastsasrec model"):
        SASRec.load(q)


# ----------------------------------------------------------------------------- array contents
def test_duplicate_item_ids_are_named(model, saved, tmp_path):
    ids = model.item_ids.copy()
    ids[2] = ids[1]
    q = rewrite(saved, tmp_path / "dup.fsr", replace={"item_ids.npy": npy(ids)})
    with pytest.raises(ValueError, match=f"item id {ids[1]} appears more than once"):
        SASRec.load(q)
    q = rewrite(saved, tmp_path / "order.fsr", replace={"item_ids.npy": npy(model.item_ids[::-1].copy())})
    with pytest.raises(ValueError, match="ascending"):
        SASRec.load(q)


def test_negative_popularity(model, saved, tmp_path):
    pop = model._popularity.copy()
    pop[0] = -5
    q = rewrite(saved, tmp_path / "pop.fsr", replace={"popularity.npy": npy(pop)})
    with pytest.raises(ValueError, match="negative popularity -5"):
        SASRec.load(q)


def test_popularity_whose_total_overflows_int64(model, saved, tmp_path):
    # Found by tests/test_fuzz.py: 5 counts of 2**62 each wrapped their int64 total around,
    # and the popular items' scores (their shares of it) came out in the billions.
    pop = np.full_like(model._popularity, 2**62)
    q = rewrite(saved, tmp_path / "pop.fsr", replace={"popularity.npy": npy(pop)})
    with pytest.raises(ValueError, match=r"popularity counts sum to more than 2\*\*62"):
        SASRec.load(q)


def test_non_finite_weights_in_a_file(model, saved, tmp_path):
    flat = model._engine.get_params().copy()
    flat[3] = np.inf
    q = rewrite(saved, tmp_path / "inf.fsr", replace={"params.npy": npy(flat)})
    with pytest.raises(ValueError, match="NaN or infinite"):
        SASRec.load(q)


def test_weights_whose_forward_is_not_finite(model, saved, tmp_path):
    """Finite weights, re-signed, whose forward pass is not: every weight 3e38 (NaN hidden
    states: recommend would return nothing), and weights whose hidden states are finite
    but whose scores overflow (a huge final bias times larger item embeddings)."""
    flat = model._engine.get_params()
    q = rewrite(saved, tmp_path / "big.fsr", replace={"params.npy": npy(np.full_like(flat, 3e38))})
    with pytest.raises(ValueError, match=r"big\.fsr'.*weights give a non-finite forward pass"):
        SASRec.load(q, device="cpu")
    flat = flat.copy()
    where = {n: (o, int(np.prod(s))) for n, o, s in model._engine.tensors()}
    o, n = where["item_emb"]
    flat[o:o + n] *= 100
    o, n = where["final_ln.bias"]
    flat[o:o + n] = 1e37
    q = rewrite(saved, tmp_path / "scores.fsr", replace={"params.npy": npy(flat)})
    with pytest.raises(ValueError, match=r"scores\.fsr'.*weights give a non-finite forward pass"):
        SASRec.load(q, device="cpu")
    same_model(model, SASRec.load(saved, device="cpu"))  # the unaltered file still loads


def test_big_endian_arrays_load(model, saved, tmp_path):
    rep = {"params.npy": npy(model._engine.get_params().astype(">f4")),
           "item_ids.npy": npy(model.item_ids.astype(">i8")),
           "popularity.npy": npy(model._popularity.astype(">i8"))}
    same_model(model, SASRec.load(rewrite(saved, tmp_path / "be.fsr", replace=rep), device="cpu"))


# ----------------------------------------------------------------------------- threads
def test_thread_count_never_comes_from_the_file(saved, tmp_path):
    q = rewrite(saved, tmp_path / "t.fsr", edit=lambda m: m["params"].update(num_threads=7))
    m = SASRec.load(q, device="cpu")
    assert m.num_threads == 0
    m = _persist.load(SASRec, q, device="cpu", num_threads=2)
    assert m.num_threads == 2 and m._engine.threads == 2
    with pytest.raises(ValueError, match="num_threads"):
        _persist.load(SASRec, q, device="cpu", num_threads=-1)


# ----------------------------------------------------------------------------- saving
def test_saved_file_follows_the_umask(model, tmp_path, monkeypatch):
    if os.name != "posix":
        pytest.skip("POSIX permissions")
    old = os.umask(0o022)
    try:
        model.save(tmp_path / "a.fsr")
        assert stat.S_IMODE(os.stat(tmp_path / "a.fsr").st_mode) == 0o644
        os.umask(0o077)
        model.save(tmp_path / "a.fsr")  # replacing a file: the new one's mode
        assert stat.S_IMODE(os.stat(tmp_path / "a.fsr").st_mode) == 0o600
        # where /proc does not say the umask, it is read by setting it back
        monkeypatch.setattr(_archive, "open", lambda *a, **k: (_ for _ in ()).throw(OSError()),
                            raising=False)
        os.umask(0o027)
        assert _archive.umask() == 0o027 and os.umask(0o027) == 0o027
        model.save(tmp_path / "b.fsr")
        assert stat.S_IMODE(os.stat(tmp_path / "b.fsr").st_mode) == 0o640
    finally:
        os.umask(old)


def test_saving_through_a_symlink_keeps_the_link(model, tmp_path):
    real = tmp_path / "models" / "v1.fsr"
    real.parent.mkdir()
    real.write_bytes(b"old")
    link = tmp_path / "current.fsr"
    link.symlink_to(os.path.join("models", "v1.fsr"))  # a relative link
    model.save(link)
    assert link.is_symlink() and os.readlink(link) == os.path.join("models", "v1.fsr")
    same_model(model, SASRec.load(real, device="cpu"))
    assert sorted(os.listdir(tmp_path)) == ["current.fsr", "models"]
    assert os.listdir(real.parent) == ["v1.fsr"]
    dangling = tmp_path / "next.fsr"
    dangling.symlink_to(tmp_path / "models" / "v2.fsr")
    model.save(dangling)
    assert dangling.is_symlink() and (tmp_path / "models" / "v2.fsr").is_file()


class Diverged:
    """What save reads of a model (its fitted snapshot), with a NaN among the weights (the
    engine itself refuses non-finite weights, so a model whose training diverged is played
    by this)."""

    def __init__(self, model):
        engine = model._engine
        flat = engine.get_params().copy()
        flat[-1] = np.nan
        fake = type("Engine", (), {"tensors": staticmethod(engine.tensors),
                                   "get_params": staticmethod(lambda: flat)})()
        self.state = dataclasses.replace(model._fitted(), engine=fake)

    def _fitted(self):
        return self.state


def test_nan_weights_are_never_saved(model, tmp_path):
    p = tmp_path / "m.fsr"
    model.save(p)
    before = p.read_bytes()
    with pytest.raises(ValueError, match="1 of the model's .* weights are NaN or infinite .*final_ln.bias"):
        _persist.save(Diverged(model), p)
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.fsr"]
    with pytest.raises(ValueError, match="NaN"):
        _persist.save(Diverged(model), tmp_path / "new.fsr")
    assert os.listdir(tmp_path) == ["m.fsr"]


def test_saving_onto_a_folder_or_a_fifo(model, tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        model.save(tmp_path)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe")
        with pytest.raises(ValueError, match="FIFO"):
            model.save(tmp_path / "pipe")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.save(tmp_path / "nope" / "m.fsr")
    for empty in ("", b"m.fsr"):  # nothing to name (an OSError about a temporary file before)
        with pytest.raises(ValueError, match=r"path must name a file to save to .*got " + repr(empty)):
            model.save(empty)
    assert sorted(os.listdir(tmp_path)) == (["pipe"] if hasattr(os, "mkfifo") else [])


def test_saved_file_is_fsynced(model, tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")
                                                               if os.path.exists("/proc/self/fd") else fd),
                                                 real(fd)))
    model.save(tmp_path / "m.fsr")
    assert len(synced) == 2  # the temporary file, then the folder
    if isinstance(synced[0], str):
        assert ".fastsasrec-" in synced[0] and synced[1] == str(tmp_path)
