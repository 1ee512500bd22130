"""Preprocessing: what to do with NaN/inf cells, and optional scaling, before detection."""

from __future__ import annotations

import enum
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from pynomaly.domain.errors import InvalidInput


class MissingPolicy(enum.Enum):
    REJECT = "reject"  # fail the job, naming the first bad cell
    IMPUTE_MEDIAN = "impute_median"
    IMPUTE_MEAN = "impute_mean"
    DROP_ROWS = "drop_rows"


class Scaling(enum.Enum):
    NONE = "none"
    STANDARD = "standard"  # zero mean, unit variance
    ROBUST = "robust"  # median and IQR: not dragged by the anomalies themselves
    MINMAX = "minmax"


@dataclass(frozen=True)
class PreprocessOptions:
    missing: MissingPolicy = MissingPolicy.IMPUTE_MEDIAN
    scaling: Scaling = Scaling.NONE

    @classmethod
    def parse(cls, raw: dict[str, Any] | None) -> PreprocessOptions:
        raw = dict(raw or {})
        unknown = sorted(set(raw) - {"missing", "scaling"})
        if unknown:
            raise InvalidInput(f"unknown preprocessing option(s) {unknown}; use 'missing' and 'scaling'")
        try:
            missing = MissingPolicy(raw.get("missing", cls.missing.value))
        except ValueError:
            raise InvalidInput(f"preprocessing.missing must be one of {[m.value for m in MissingPolicy]}") from None
        try:
            scaling = Scaling(raw.get("scaling", cls.scaling.value))
        except ValueError:
            raise InvalidInput(f"preprocessing.scaling must be one of {[s.value for s in Scaling]}") from None
        return cls(missing, scaling)

    def as_dict(self) -> dict[str, str]:
        return {"missing": self.missing.value, "scaling": self.scaling.value}


@dataclass(frozen=True)
class PreprocessReport:
    rows_in: int
    rows_out: int
    cells_imputed: int
    kept_rows: list[int] | None  # original row indices when rows were dropped

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "cells_imputed": self.cells_imputed,
            "rows_dropped": self.rows_in - self.rows_out,
        }


REJECT_HINT = "choose preprocessing.missing impute_median, impute_mean or drop_rows to accept them"


def refuse_non_finite(values: np.ndarray, columns: tuple[str, ...] | list[str], hint: str) -> None:
    """Raise :class:`InvalidInput` naming the first NaN/inf cell (row = 0-based data row), if any."""
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise InvalidInput(f"{int(bad.sum())} NaN/inf cell(s), first at row {row}, column {columns[col]!r}; {hint}")


def preprocess(
    values: np.ndarray, columns: tuple[str, ...] | list[str], options: PreprocessOptions
) -> tuple[np.ndarray, PreprocessReport]:
    values = np.array(values, dtype=np.float64, copy=True)
    bad = ~np.isfinite(values)
    rows_in = values.shape[0]
    imputed = 0
    kept: list[int] | None = None
    if bad.any():
        if options.missing is MissingPolicy.REJECT:
            refuse_non_finite(values, columns, REJECT_HINT)
        if options.missing is MissingPolicy.DROP_ROWS:
            keep = ~bad.any(axis=1)
            kept = [int(i) for i in np.flatnonzero(keep)]
            values = values[keep]
            if values.shape[0] < 2:
                raise InvalidInput("fewer than 2 rows remain after dropping rows with NaN/inf")
        else:
            finite = np.where(bad, np.nan, values)
            # An all-NaN column is reported below; numpy's own warning about it is noise.
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                fill = (
                    np.nanmedian(finite, axis=0)
                    if options.missing is MissingPolicy.IMPUTE_MEDIAN
                    else np.nanmean(finite, axis=0)
                )
            empty = [columns[i] for i in np.flatnonzero(np.isnan(fill))]
            if empty:
                raise InvalidInput(f"column(s) {empty} have no finite value to impute from")
            imputed = int(bad.sum())
            values = np.where(bad, fill[np.newaxis, :], values)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below, by name
        values = _scale(values, options.scaling)
    # Values near the float limit (±1e308) overflow the scaling's sums: say so here, not later as
    # "NaN or infinite values" the user never sent.
    refuse_non_finite(
        values, columns, f"scaling {options.scaling.value!r} overflowed on values this large; use 'robust' or 'none'"
    )
    return values, PreprocessReport(rows_in, values.shape[0], imputed, kept)


def _scale(values: np.ndarray, scaling: Scaling) -> np.ndarray:
    if scaling is Scaling.NONE:
        return values
    if scaling is Scaling.STANDARD:
        centre, spread = values.mean(axis=0), values.std(axis=0)
    elif scaling is Scaling.ROBUST:
        q1, centre, q3 = np.percentile(values, [25, 50, 75], axis=0)
        spread = q3 - q1
    else:
        centre, spread = values.min(axis=0), values.max(axis=0) - values.min(axis=0)
    spread = np.where(spread == 0, 1.0, spread)
    scaled: np.ndarray = (values - centre) / spread  # numpy's operators on arrays are typed Any
    return scaled
