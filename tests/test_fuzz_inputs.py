"""Hypothesis fuzzing of what a user hands the commands (issue 19): the config loader (YAML text
and key=value overrides) and every text file reader (data files, prediction files, gold files,
metrics.jsonl), fed random bytes with BOMs, CRLF, NULs, huge fields, invalid UTF-8, ragged rows
and empty files. Each input ends in a result or a user error (UserError / ConfigError, one
`error:` line from a command), never another exception. Examples are bounded so the file takes
seconds."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from almol_jax.config import load_config
from almol_jax.config.loader import _schema_keys
from almol_jax.config.sections import ColumnsSection
from almol_jax.data.report import DataReport
from almol_jax.data.sources import read_examples
from almol_jax.errors import ConfigError, UserError
from almol_jax.eval.io import read_predictions
from almol_jax.preferences.from_predictions import read_gold_pairs, read_prediction_file
from almol_jax.train.metrics_log import read_metrics, truncate_metrics

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # the same examples in CI every time
    database=None,  # no .hypothesis folder in the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HEADERS = [
    b"SMILES\tground truth\toutput",
    b"description\tground truth\toutput",
    b"source\tchosen\trejected\tdirection",
    b"SMILES,description",
    b"source,reference,output",
    b"molecule\tcaption",
]
PIECES = st.sampled_from(
    [
        b"\t",
        b",",
        b'"',
        b"\n",
        b"\r\n",
        b"\r",
        b"\x00",
        b"\xef\xbb\xbf",  # a byte-order mark
        b"\xff\xfe",  # invalid UTF-8
        b"\xc3",  # a cut multi-byte character
        b"CCO",
        b"The molecule is x.",
        b"smiles2caption",
        b"caption2smiles",
        b'{"source": "C", "chosen": "a", "rejected": "b", "direction": "smiles2caption"}',
        b'{"SMILES": "C", "description": "d", "output": 3}',
        b'{"loss": 1.0, "step": 2}',
        b"[" * 3000,  # deep nesting
        b"x" * 200_000,  # a huge field
        b"{",
        b"null",
    ]
)
FILE_BYTES = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda header, parts: header + b"\n" + b"".join(parts),
        st.sampled_from([b"", b"\xef\xbb\xbf"]).flatmap(
            lambda bom: st.sampled_from(HEADERS).map(lambda h: bom + h)
        ),
        st.lists(st.one_of(PIECES, st.binary(max_size=20)), max_size=25),
    ),
)


def _outcome(fn, *args):
    """fn(*args), or the user error it raised; any other exception fails the test."""
    try:
        return fn(*args)
    except UserError as err:
        assert str(err), "a user error must say what is wrong"
        return err


def _with_file(data: bytes, name: str, fn) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        fn(path)


@FUZZ
@given(data=FILE_BYTES, suffix=st.sampled_from([".tsv", ".txt", ".jsonl", ".csv"]))
def test_data_files_end_in_examples_or_a_user_error(data, suffix):
    def read(path):
        for fmt in ("auto", "preference", "pairs", "scorer_tsv"):
            _outcome(read_examples, str(path), fmt, ColumnsSection(), DataReport(), "train")

    _with_file(data, "data" + suffix, read)


@FUZZ
@given(data=FILE_BYTES, suffix=st.sampled_from([".txt", ".tsv", ".csv", ".jsonl", ".json"]))
def test_prediction_files_end_in_rows_or_a_user_error(data, suffix):
    def read(path):
        for task in (None, "smiles2caption", "caption2smiles"):
            _outcome(read_predictions, path, task)

    _with_file(data, "pred" + suffix, read)


@FUZZ
@given(data=FILE_BYTES, suffix=st.sampled_from([".txt", ".csv", ".jsonl"]))
def test_preference_inputs_end_in_rows_or_a_user_error(data, suffix):
    def read(path):
        _outcome(read_prediction_file, path)
        _outcome(read_gold_pairs, path)

    _with_file(data, "p" + suffix, read)


@FUZZ
@given(data=FILE_BYTES)
def test_metrics_files_end_in_records_or_a_user_error(data):
    def read(path):
        _outcome(read_metrics, path.parent)
        _outcome(truncate_metrics, path.parent, 5)

    _with_file(data, "metrics.jsonl", read)


KEYS = _schema_keys()
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["cpo", "auto", "merged", "1e-5", "[1, 2]", "{a: 1}", "~", ".nan"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _nested(items) -> dict:
    """{dotted key: value} as nested mappings (a later key replaces an earlier section)."""
    out: dict = {}
    for key, value in items:
        node = out
        *parents, last = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return out


def _config_outcome(path, overrides):
    try:
        return load_config(path, overrides)
    except ConfigError as err:
        assert str(err)
        return err


CONFIG_TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=6).map(
        lambda items: yaml.safe_dump(_nested(items))
    ),
    st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=6).map(
        lambda items: json.dumps(_nested(items), default=str)
    ),
)


@FUZZ
@given(text=CONFIG_TEXT, junk=st.sampled_from([b"", b"\xff\xfe", b"\x00", b"\xef\xbb\xbf"]))
def test_config_files_end_in_a_config_or_a_config_error(text, junk):
    _with_file(junk + text.encode("utf-8"), "run.yaml", lambda p: _config_outcome(p, ()))


OVERRIDE = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda key, value: f"{key}={value}",
        st.one_of(st.sampled_from(KEYS), st.text(max_size=15)),
        st.one_of(
            st.text(max_size=30),
            VALUES.map(lambda v: json.dumps(v, default=str)),
            st.sampled_from(["[", "{a: [1", "a,b,c", "&x *x", "!!python/object:os.system", ""]),
        ),
    ),
)


@FUZZ
@given(overrides=st.lists(OVERRIDE, min_size=1, max_size=4))
def test_overrides_end_in_a_config_or_a_config_error(overrides):
    _config_outcome(None, overrides)
