"""The engine's config is one table (cpp/include/fastsasrec/config.def): the binding reads
exactly its fields, checks each one's range with a message naming it, and Python's
parameters and the model file's schema are derived from it."""
import math
import pathlib
import re

import pytest

from fastsasrec import _core, _params, _persist

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCHEMA = _core.config_schema()
BY_NAME = {f["name"]: f for f in SCHEMA}
VALID = dict(n_items=10, factors=8, n_heads=1, n_layers=1, max_seq=5, loss="softmax")


def table_names():
    text = (ROOT / "cpp/include/fastsasrec/config.def").read_text()
    return re.findall(r"^FSR_CONFIG\(\s*\w+,\s*(\w+),", text, flags=re.M)


def test_the_schema_is_the_table():
    assert [f["name"] for f in SCHEMA] == table_names()
    for f in SCHEMA:
        assert set(f) == {"name", "type", "default", "min", "max", "range", "choices", "doc"}
        assert f["type"] in ("int", "float", "bool", "uint64", "str"), f
        assert f["doc"], f
        assert (f["choices"] is not None) == (f["type"] == "str"), f
        if f["choices"] is not None:
            assert f["default"] in f["choices"], f
        if f["max"] is not None:
            assert f["min"] is not None and f["min"] < f["max"], f
    # enum fields, and the defaults as the table writes them (not their float rounding)
    assert BY_NAME["loss"]["choices"] == ["bce", "sampled_softmax", "softmax", "gbce"]
    assert BY_NAME["precision"]["choices"] == ["fp32", "bf16"]
    assert BY_NAME["dropout"]["default"] == 0.2 and BY_NAME["learning_rate"]["default"] == 1e-3
    assert BY_NAME["n_layers"]["range"] == "in 0..300" and BY_NAME["dropout"]["range"] == "in [0, 1)"


def test_the_engine_accepts_exactly_the_schemas_keys():
    for f in SCHEMA:
        cfg = dict(VALID)
        cfg[f["name"]] = VALID.get(f["name"], f["default"])
        _core.check_config(cfg)  # every key of the table is read
    # a model built from every default (with a catalogue) is the table's defaults
    defaults = {f["name"]: f["default"] for f in SCHEMA}
    defaults.update(n_items=300)
    _core.Model(defaults, "cpu")
    for key in ("bogus", "n_item", "Factors", "threads", "random_state"):
        with pytest.raises(ValueError, match=f"unknown config key '{key}'"):
            _core.check_config(dict(VALID, **{key: 1}))


def bad_values(f):
    """Values out of a ranged field's range: below its minimum, above its maximum, and
    for a float the non-finite ones."""
    integral = f["type"] in ("int", "uint64")
    step = 1 if integral else 0.5
    out = [f["min"] - step]
    if f["max"] is not None:
        out.append(f["max"] + step)
    if f["range"].startswith(">") and not f["range"].startswith(">="):
        out.append(f["min"])  # "> lo": lo itself is out
    if f["range"].endswith(")"):
        out.append(f["max"])  # "[lo, hi)": hi itself is out
    if not integral:
        out += [math.nan, math.inf]
    return out


RANGED = [f for f in SCHEMA if f["range"] is not None]


@pytest.mark.parametrize("field", RANGED, ids=[f["name"] for f in RANGED])
def test_a_value_out_of_range_is_refused_naming_the_field(field):
    name = field["name"]
    for value in bad_values(field):
        cfg = dict(VALID, **{name: value})
        shown = re.escape(f"{value:g}" if isinstance(value, float) else str(value))
        want = rf"^{name} must be {re.escape(field['range'])}, got {shown}$"
        with pytest.raises(ValueError, match=want):
            _core.check_config(cfg)
        with pytest.raises(ValueError, match=want):
            _core.Model(cfg, "cpu")
    # the bounds themselves, where included, are accepted
    if field["range"].startswith(">=") or field["range"].startswith("in"):
        _core.check_config(dict(VALID, **{name: field["min"]}))


def test_n_items_is_checked_only_with_the_catalogue():
    _core.check_config({"factors": 8})  # no catalogue yet: n_items not required
    with pytest.raises(ValueError, match="^n_items must be >= 1, got 0$"):
        _core.check_config({"n_items": 0})


@pytest.mark.parametrize("field", SCHEMA, ids=[f["name"] for f in SCHEMA])
def test_a_value_of_the_wrong_type_is_refused_naming_the_field(field):
    wrong = 3 if field["type"] == "str" else "x"
    with pytest.raises(ValueError, match=rf"^{field['name']} must be .*, got {re.escape(repr(wrong))}$"):
        _core.check_config(dict(VALID, **{field["name"]: wrong}))
    if field["choices"] is not None:
        names = ", ".join(f"'{c}'" for c in field["choices"])
        with pytest.raises(ValueError, match=rf"^{field['name']} must be one of {names}, got 'nope'$"):
            _core.check_config(dict(VALID, **{field["name"]: "nope"}))


def test_python_derives_its_engine_keys_and_types_from_the_schema():
    kinds = {"int": "int", "float": "float", "str": "choice", "bool": "flag", "uint64": "seed"}
    engine_params = {name for name in _params.PARAMS if name in BY_NAME}
    assert engine_params == {"factors", "n_layers", "n_heads", "max_seq", "dropout", "loss",
                             "negatives", "logq_correction", "n_negatives", "gbce_t",
                             "learning_rate", "weight_decay", "batch_size", "precision",
                             "feature_pooling", "id_dropout"}
    for name in engine_params:
        assert _params.PARAMS[name][0] == kinds[BY_NAME[name]["type"]], name
    assert _params.LOSSES[1:] == tuple(BY_NAME["loss"]["choices"])
    assert _params.PRECISIONS == tuple(BY_NAME["precision"]["choices"])
    # the engine config of a fit: only the schema's keys, each accepted by the engine
    params = dict(_params.DEFAULTS, max_seq=5, dropout=0.1, loss="gbce", negatives="uniform",
                  n_negatives=3, factors=8, learning_rate=1e-3)
    cfg = _params.engine_config(params, n_items=10, seed=7)
    assert set(cfg) == {"n_items", "factors", "n_heads", "n_layers", "max_seq", "dropout", "loss",
                        "n_negatives", "learning_rate", "weight_decay", "batch_size", "precision",
                        "seed", "gbce_t"}
    _core.check_config(cfg)
    # the features' keys only for a model with features
    cfg = _params.engine_config(params, n_items=10, seed=7, n_feature_values=4)
    assert cfg["n_feature_values"] == 4 and cfg["feature_pooling"] == "mean"
    _core.check_config(cfg)
    # id_dropout with features only, and only when it is not 0
    assert "id_dropout" not in _params.engine_config(dict(params, id_dropout=0.3), n_items=10,
                                                     seed=7)
    assert "id_dropout" not in _params.engine_config(dict(params, id_dropout=0.0), n_items=10,
                                                     seed=7, n_feature_values=4)
    cfg = _params.engine_config(dict(params, id_dropout=0.3), n_items=10, seed=7, n_feature_values=4)
    assert cfg["id_dropout"] == 0.3
    _core.check_config(cfg)
    # the model file's schema: every key with the engine's type
    assert _persist._CONFIG_TYPES == {f["name"]: f["type"] for f in SCHEMA}
