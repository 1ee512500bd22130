"""Dataset parsing: CSV and JSON rows into a float matrix, missing markers, limits and clear errors."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest

from pynomaly.domain import datasets
from pynomaly.domain.datasets import (
    Dataset,
    DatasetLimits,
    _parse_csv_exact,
    _parse_plain_csv,
    from_rows,
    parse_csv,
)
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


# -- the vectorised CSV path ---------------------------------------------------------------------
def _outcome(parse: Any) -> tuple[Any, ...]:
    """What a parser made of an input: its columns and matrix (NaN compared as equal), or its error."""
    try:
        ds = parse()
    except InvalidInput as exc:
        return ("refused", str(exc))
    return ("parsed", ds.columns, ds.values.shape, ds.values.tobytes())


ODD_CELLS = [
    "1d5", "1_0", " 1 ", "inf", "-Infinity", "NaN", "nan", "NA", "", " ", "1.5e", ".5", "5.", "0x1p3", "\u0661\u0662",
    "+1", "1e400", "-0", "1 000", "1.5.2", "true", "\t2\t", "nan(1)", "INF", "1e-400", "0001", "\u00a01", "#1", "--1",
]  # fmt: skip


@pytest.mark.parametrize("cell", ODD_CELLS)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_the_vectorised_csv_path_agrees_with_the_exact_parser_on_odd_cells(cell: str, where: str) -> None:
    rows = [["1", "2"], ["3", "4"], ["5", "6"]]
    rows[{"first": 0, "middle": 1, "last": 2}[where]][1] = cell
    text = "a,b\r\n" + "".join(",".join(r) + "\n" for r in rows)
    limits = DatasetLimits(10**6, 100, 10)
    assert _outcome(lambda: parse_csv(text.encode(), limits)) == _outcome(lambda: _parse_csv_exact(text, limits))


@pytest.mark.parametrize(
    "text",
    [
        "a,b\n1,2\n\n3,4\n",  # a blank line
        "a,b\n1,2\n   \n3,4\n",  # a line of spaces
        "a,b\n1,2\n,\n3,4\n",  # a line of empty cells
        "a,b\n1,2,3\n",  # ragged
        "a,b\n1\n",
        '"a","b"\n1,2\n',  # quoted
        'a,b\n"1",2\n',
        "a,b\n1,2",  # no final newline
        "a;b\n1;2\n",  # another delimiter: one column named "a;b"
        "a\n1\n2\n",  # one column
        "a,a\n1,2\n",  # a header the exact parser refuses
        "a,b,c,d,e\n1,2,3,4,5\n",  # too many columns
        "a,b\n" + "1,2\n" * 101,  # too many rows
        "a,b\n" + "1,2\n" * 101 + "x,2\n",  # too many rows before a bad cell
        "a,b\n" + "1,2\n" * 50 + "x,2\n" + "1,2\n" * 60,  # a bad cell before the row limit
        "a,b\n\n\n",  # no data rows
        "# c,b\n1,2\n",  # no comments: '#' is part of a name
        "a,b\n#1,2\n",
        "a\n" + "1" * 200_000 + "\n",  # a field over the csv module's limit
        "a\n1\n" + "2" * 140_000 + "\n3\n",
    ],
)
@pytest.mark.parametrize("chunk", [8, 64, 256 * 1024])
def test_the_vectorised_csv_path_agrees_with_the_exact_parser(
    text: str, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets, "CSV_CHUNK_CHARS", chunk)  # chunk boundaries everywhere
    limits = DatasetLimits(10**6, 100, 4)
    assert _outcome(lambda: parse_csv(text.encode(), limits)) == _outcome(lambda: _parse_csv_exact(text, limits))


@pytest.mark.parametrize("chunk", [16, 1000, 256 * 1024])
def test_plain_numeric_csv_takes_the_vectorised_path_with_the_same_values(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(datasets, "CSV_CHUNK_CHARS", chunk)
    rng = np.random.default_rng(3)
    values = rng.normal(scale=1e6, size=(500, 4))
    values[::7, 1] = np.round(values[::7, 1])  # integers too
    limits = DatasetLimits(10**7, 1000, 10)
    for fmt in ("%.17g", "%.6e", "%.3f", "%d"):
        out = io.StringIO()
        np.savetxt(out, values, delimiter=",", fmt=fmt, header="w,x,y,z", comments="")
        text = out.getvalue()
        fast = _parse_plain_csv(text, limits)
        assert fast is not None, "plain numbers must not fall back to the cell-by-cell parser"
        exact = _parse_csv_exact(text, limits)
        assert fast.columns == exact.columns == ("w", "x", "y", "z")
        assert fast.values.tobytes() == exact.values.tobytes()
