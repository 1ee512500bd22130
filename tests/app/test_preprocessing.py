"""Preprocessing: reject or impute NaN/inf, drop rows, scale."""

from __future__ import annotations

import numpy as np
import pytest

from pynomaly.domain.errors import InvalidInput
from pynomaly.domain.preprocessing import MissingPolicy, PreprocessOptions, Scaling, preprocess

COLS = ("a", "b")
RAW = np.array([[1.0, 10.0], [np.nan, 20.0], [3.0, np.inf], [5.0, 40.0]])


def test_reject_names_the_first_bad_cell() -> None:
    with pytest.raises(InvalidInput, match=r"2 NaN/inf cell\(s\), first at row 1, column 'a'"):
        preprocess(RAW, COLS, PreprocessOptions(MissingPolicy.REJECT))


def test_impute_median_and_mean() -> None:
    out, report = preprocess(RAW, COLS, PreprocessOptions(MissingPolicy.IMPUTE_MEDIAN))
    assert out[1, 0] == 3.0 and out[2, 1] == 20.0 and report.cells_imputed == 2 and report.rows_out == 4
    out, _ = preprocess(RAW, COLS, PreprocessOptions(MissingPolicy.IMPUTE_MEAN))
    assert out[1, 0] == pytest.approx(3.0) and out[2, 1] == pytest.approx(70 / 3)
    assert np.isnan(RAW[1, 0]), "the input is not modified"


def test_drop_rows_keeps_original_indices() -> None:
    out, report = preprocess(RAW, COLS, PreprocessOptions(MissingPolicy.DROP_ROWS))
    assert out.tolist() == [[1.0, 10.0], [5.0, 40.0]]
    assert report.kept_rows == [0, 3] and report.as_dict()["rows_dropped"] == 2


def test_drop_rows_and_impute_failures() -> None:
    with pytest.raises(InvalidInput, match="fewer than 2 rows"):
        preprocess(np.array([[1.0], [np.nan]]), ("a",), PreprocessOptions(MissingPolicy.DROP_ROWS))
    with pytest.raises(InvalidInput, match=r"column\(s\) \['b'\]"):
        preprocess(np.array([[1.0, np.nan], [2.0, np.nan]]), COLS, PreprocessOptions())


@pytest.mark.parametrize("scaling", list(Scaling))
def test_scaling(scaling: Scaling) -> None:
    values = np.array([[1.0, 7.0], [2.0, 7.0], [3.0, 7.0], [10.0, 7.0]])
    out, _ = preprocess(values, COLS, PreprocessOptions(scaling=scaling))
    assert np.isfinite(out).all()
    assert (out[:, 1] == out[0, 1]).all(), "a constant column stays constant (no division by zero)"
    if scaling is Scaling.STANDARD:
        assert out[:, 0].mean() == pytest.approx(0) and out[:, 0].std() == pytest.approx(1)
    if scaling is Scaling.MINMAX:
        assert out[:, 0].min() == 0 and out[:, 0].max() == 1
    if scaling is Scaling.ROBUST:
        assert np.median(out[:, 0]) == pytest.approx(0)
    if scaling is Scaling.NONE:
        np.testing.assert_array_equal(out, values)


def test_options_parse() -> None:
    assert PreprocessOptions.parse(None).as_dict() == {"missing": "impute_median", "scaling": "none"}
    assert PreprocessOptions.parse({"missing": "reject", "scaling": "robust"}).missing is MissingPolicy.REJECT
    for raw, message in (({"fill": "x"}, "unknown"), ({"missing": "zero"}, "missing"), ({"scaling": "log"}, "scaling")):
        with pytest.raises(InvalidInput, match=message):
            PreprocessOptions.parse(raw)
