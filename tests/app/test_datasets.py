"""Dataset parsing: CSV and JSON rows into a float matrix, missing markers, limits and clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pynomaly.domain import datasets as datasets_module
from pynomaly.domain.datasets import Dataset, DatasetLimits, from_rows, parse_csv
from pynomaly.domain.errors import InvalidInput

LIMITS = DatasetLimits(max_bytes=10_000, max_rows=5, max_columns=3)


def test_csv_parses_header_numbers_and_missing_markers() -> None:
    data = b"\xef\xbb\xbfa, b\n1,2\n\n3,NA\nnan, \n-inf,1e3\n"
    ds = parse_csv(data, LIMITS)
    assert ds.columns == ("a", "b")
    assert ds.shape == (4, 2)
    assert ds.values[0].tolist() == [1.0, 2.0]
    assert math.isnan(ds.values[1, 1]) and math.isnan(ds.values[2, 0]) and math.isnan(ds.values[2, 1])
    assert ds.values[3, 0] == -math.inf
    assert ds.summary() == {"rows": 4, "columns": ["a", "b"], "missing": 3, "infinite": 1}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"a,b\n", "no data rows"),
        (b"a,a\n1,2\n", "duplicate column"),
        (b"a,\n1,2\n", "every column needs a name"),
        (b"a,b\n1,2,3\n", "line 2 has 3 cells"),
        (b"a,b\n1,x\n", "row 2, column 'b'"),
        (b"a,b,c,d\n1,2,3,4\n", "4 columns"),
        (b"a\n" + b"1\n" * 6, "more than 5 rows"),
        (b"a\n\xff\xfe\n", "not UTF-8"),
        (b"a\n" + b"1\n" * 6000, "bytes; the limit"),
    ],
)
def test_csv_rejections_name_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_csv(data, LIMITS)


def test_json_rows_lists_objects_and_default_names() -> None:
    ds = from_rows([[1, 2], [3, None]], None, LIMITS)
    assert ds.columns == ("x0", "x1") and math.isnan(ds.values[1, 1])
    ds = from_rows([{"t": 1, "p": "2"}, {"p": 4, "t": "nan"}], None, LIMITS)
    assert ds.columns == ("t", "p")
    assert ds.values[0].tolist() == [1.0, 2.0] and math.isnan(ds.values[1, 0]) and ds.values[1, 1] == 4.0


@pytest.mark.parametrize(
    ("rows", "columns", "message"),
    [
        ([], None, "no data rows"),
        ([[1, 2], [3]], None, "row 1: expected a list of 2"),
        ([{"a": 1}, {"b": 2}], None, "exactly the keys"),
        ([[True, 1]], None, "booleans"),
        ([[{"x": 1}, 1]], None, "dict is not a number"),
        ([[1]] * 6, None, "6 rows; the limit is 5"),
        ([[1, 2, 3, 4]], None, "4 columns"),
        ([[1, 2]], ["a", "a"], "duplicate"),
        # Non-finite numbers (the NaN/Infinity tokens Python's json and pydantic let through) are not JSON.
        ([[1, 2], [3, float("nan")]], None, r"row 1, column 'x1': nan is not a JSON number; send null"),
        ([{"t": 1}, {"t": float("inf")}], None, r"row 1, column 't': inf is not a JSON number"),
        ([[float("-inf"), 2]], None, r"row 0, column 'x0': -inf is not a JSON number"),
    ],
)
def test_json_rows_rejections(rows: list, columns: list[str] | None, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        from_rows(rows, columns, LIMITS)


def test_payload_round_trip_keeps_nan_and_inf() -> None:
    values = np.array([[1.5, np.nan], [np.inf, -np.inf]])
    ds = Dataset(("a", "b"), values)
    payload = ds.to_payload()
    assert payload["rows"] == [[1.5, "nan"], ["inf", "-inf"]]
    back = Dataset.from_payload(payload)
    assert back.columns == ("a", "b")
    np.testing.assert_array_equal(back.values, values)


def test_binary_round_trip_keeps_columns_nan_and_inf() -> None:
    values = np.array([[1.5, np.nan, 3.0], [np.inf, -np.inf, -0.25]])
    ds = Dataset(("temp", "ünïcode", "x,y"), values)
    back = Dataset.from_bytes(ds.to_bytes())
    assert back.columns == ("temp", "ünïcode", "x,y")
    np.testing.assert_array_equal(back.values, values)


def test_binary_form_refuses_a_matrix_that_does_not_fit_its_header() -> None:
    raw = Dataset(("a", "b"), np.zeros((3, 2))).to_bytes()
    size = int.from_bytes(raw[:4], "big")
    lying = b'{"columns":["a"]}'
    with pytest.raises(ValueError, match="shape"):
        Dataset.from_bytes(len(lying).to_bytes(4, "big") + lying + raw[4 + size :])


# -- the vectorised fast paths agree with the careful per-cell path ----------------------------------
WIDE = DatasetLimits(max_bytes=1_000_000, max_rows=50, max_columns=4)
CELLS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**320), max_value=10**320),
    st.booleans(),
    st.none(),
    st.sampled_from(["1.5", " 2 ", "NA", "", "nan", "x", "1_000", "inf"]),
)
TEXT_CELLS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.sampled_from(["", " ", "NA", "nan", "-Inf", "1_000", "0x10", ".5", "5.", "1e", '"3"', "#4", " 7 "]),
)


def _outcome(parse, *args):  # type: ignore[no-untyped-def]
    try:
        dataset = parse(*args)
    except InvalidInput as exc:
        return ("refused", str(exc))
    return (dataset.columns, dataset.values.tobytes(), dataset.values.shape)


def _careful(monkeypatch: pytest.MonkeyPatch, parse, *args):  # type: ignore[no-untyped-def]
    with monkeypatch.context() as patched:
        patched.setattr(datasets_module, "_numeric_matrix", lambda *a: None)
        patched.setattr(datasets_module, "_csv_matrix", lambda *a: None)
        return _outcome(parse, *args)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(1, 3), data=st.data(), as_objects=st.booleans())
def test_json_rows_fast_path_equals_the_careful_path(
    monkeypatch: pytest.MonkeyPatch, width: int, data: st.DataObject, as_objects: bool
) -> None:
    rows = data.draw(st.lists(st.lists(CELLS, min_size=width, max_size=width), min_size=1, max_size=6))
    if data.draw(st.booleans()):  # mostly plain numbers, the case the fast path takes
        rows = [[float(i * width + j) if j % 2 else i * width + j for j in range(width)] for i in range(len(rows))]
    names = [f"c{j}" for j in range(width)]
    payload: list = [dict(zip(names, row, strict=True)) for row in rows] if as_objects else rows
    assert _outcome(from_rows, payload, None, WIDE) == _careful(monkeypatch, from_rows, payload, None, WIDE)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(1, 3), data=st.data())
def test_csv_fast_path_equals_the_careful_path(
    monkeypatch: pytest.MonkeyPatch, width: int, data: st.DataObject
) -> None:
    lines = data.draw(
        st.lists(
            st.one_of(st.lists(TEXT_CELLS, min_size=width, max_size=width).map(",".join), st.sampled_from(["", "1"])),
            min_size=0,
            max_size=8,
        )
    )
    body = (",".join(f"c{j}" for j in range(width)) + "\n" + "\n".join(lines) + "\n").encode()
    assert _outcome(parse_csv, body, WIDE) == _careful(monkeypatch, parse_csv, body, WIDE)


def test_fast_paths_are_taken_for_plain_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agreement above would hold trivially if the fast paths never answered."""
    rows = [[1, 2.5], [3.0, -4]]
    assert datasets_module._list_rows_matrix(rows, 2).tolist() == [[1.0, 2.5], [3.0, -4.0]]
    objects = [{"a": 1, "b": 2.5}]
    assert datasets_module._object_rows_matrix(objects, ("a", "b")).tolist() == [[1.0, 2.5]]
    assert datasets_module._csv_matrix("a,b\n1,2.5\n\n3,-4\n", 1, 2, WIDE).tolist() == [[1.0, 2.5], [3.0, -4.0]]
    assert datasets_module._list_rows_matrix([[True, 1]], 2) is None
    assert datasets_module._csv_matrix('a\n"1"\n', 1, 1, WIDE) is None


@pytest.mark.parametrize(
    "body",
    [
        b"a\n#4\n1\n",  # a comment character is a cell like any other
        b"a,b\n1,#4\n",
        b"a\n1_000\n",  # float() takes it, numpy's parser does not
        b"a\n 7 \n\n\n-Inf\n",
        b"a,b\n1,2\n   \n3,4\n",
        b'a\n"3"\n',
        b"a,b\n1,2,\n",
        b"a\n0x10\n",
        b"a\r\n1\r\n2\r\n",
        b"a\n" + b"1\n" * 51,  # over max_rows
        b"a\n" + b"1" * 200_000 + b"\n",  # a field over the csv module's limit
    ],
)
def test_csv_edge_cases_parse_as_the_careful_path_does(monkeypatch: pytest.MonkeyPatch, body: bytes) -> None:
    assert _outcome(parse_csv, body, WIDE) == _careful(monkeypatch, parse_csv, body, WIDE)


CHUNKED_BODIES = [
    b"a,b\n1,2\n\n3,4\n5,6\n",
    b"a,b\r\n1,2\r\n3,4\r\n",
    b"a\n\n\n\n1\n\n2\n",  # blank lines across chunk boundaries
    b"a,b\n1,2\n3\n",  # ragged in a later chunk
    b"a,b\n1,2\n3,4,5\n",
    b"a\n1\nx\n",  # a bad cell in a later chunk
    b"a\n" + b"1\n" * 50,  # exactly max_rows
    b"a\n" + b"1\n" * 51,  # one over, in the last chunk
    b'"a\nb",c\n1,2\n3,4\n',  # a header over two lines
    b"a\n1\n" + b"2" * 140_000 + b"\n3\n",  # a field over the csv module's limit, in a later chunk
    b"a,b\n1,2",  # no final newline
]


@pytest.mark.parametrize("chunk", [1, 3, 8, 64])
@pytest.mark.parametrize("body", CHUNKED_BODIES)
def test_csv_in_chunks_parses_as_one_call_and_the_careful_path_do(
    monkeypatch: pytest.MonkeyPatch, chunk: int, body: bytes
) -> None:
    whole = _outcome(parse_csv, body, WIDE)  # these bodies are one chunk at the default size
    monkeypatch.setattr(datasets_module, "CSV_CHUNK_CHARS", chunk)
    assert _outcome(parse_csv, body, WIDE) == whole == _careful(monkeypatch, parse_csv, body, WIDE)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(1, 3), chunk=st.integers(1, 40), data=st.data())
def test_csv_fast_path_in_chunks_equals_the_careful_path(
    monkeypatch: pytest.MonkeyPatch, width: int, chunk: int, data: st.DataObject
) -> None:
    lines = data.draw(
        st.lists(
            st.one_of(st.lists(TEXT_CELLS, min_size=width, max_size=width).map(",".join), st.sampled_from(["", "1"])),
            min_size=0,
            max_size=12,
        )
    )
    body = (",".join(f"c{j}" for j in range(width)) + "\n" + "\n".join(lines) + "\n").encode()
    with monkeypatch.context() as patched:
        patched.setattr(datasets_module, "CSV_CHUNK_CHARS", chunk)
        chunked = _outcome(parse_csv, body, WIDE)
    assert chunked == _careful(monkeypatch, parse_csv, body, WIDE)


def test_plain_numbers_take_the_fast_path_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets_module, "CSV_CHUNK_CHARS", 16)
    values = np.arange(40 * 3, dtype=np.float64).reshape(40, 3) / 7
    text = "a,b,c\n" + "".join(",".join(repr(v) for v in row) + "\n" for row in values.tolist())
    parsed = datasets_module._csv_matrix(text, 1, 3, WIDE)
    assert parsed is not None and parsed.tobytes() == values.tobytes()
