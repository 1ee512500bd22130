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
    prepared, report, _ = fit_preprocess(values, columns, options)
    return prepared, report


def fit_preprocess(
    values: np.ndarray, columns: tuple[str, ...] | list[str], options: PreprocessOptions, learn: bool = False
) -> tuple[np.ndarray, PreprocessReport, FittedPreprocessing]:
    """:func:`preprocess`, also returning what it learned (imputation values, scaling parameters).

    ``learn``: compute the imputation values even when no cell is missing (a saved model needs them
    for new rows); otherwise they are computed only when used.
    """
    values = np.array(values, dtype=np.float64, copy=True)
    bad = ~np.isfinite(values)
    rows_in = values.shape[0]
    imputed = 0
    kept: list[int] | None = None
    fill: np.ndarray | None = None
    impute = options.missing in (MissingPolicy.IMPUTE_MEDIAN, MissingPolicy.IMPUTE_MEAN)
    if bad.any() and options.missing is MissingPolicy.REJECT:
        refuse_non_finite(values, columns, REJECT_HINT)
    if impute and (bad.any() or learn):
        finite = np.where(bad, np.nan, values)
        # An all-NaN column is reported below; numpy's own warning about it is noise.
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fill = (
                np.nanmedian(finite, axis=0)
                if options.missing is MissingPolicy.IMPUTE_MEDIAN
                else np.nanmean(finite, axis=0)
            )
    if bad.any():
        if options.missing is MissingPolicy.DROP_ROWS:
            keep = ~bad.any(axis=1)
            kept = [int(i) for i in np.flatnonzero(keep)]
            values = values[keep]
            if values.shape[0] < 2:
                raise InvalidInput("fewer than 2 rows remain after dropping rows with NaN/inf")
        elif fill is not None:
            empty = [columns[i] for i in np.flatnonzero(np.isnan(fill))]
            if empty:
                raise InvalidInput(f"column(s) {empty} have no finite value to impute from")
            imputed = int(bad.sum())
            values = np.where(bad, fill[np.newaxis, :], values)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below, by name
        centre, spread = _scale_parameters(values, options.scaling)
        if centre is not None and spread is not None:
            values = (values - centre) / spread
    # Values near the float limit (±1e308) overflow the scaling's sums: say so here, not later as
    # "NaN or infinite values" the user never sent.
    refuse_non_finite(
        values, columns, f"scaling {options.scaling.value!r} overflowed on values this large; use 'robust' or 'none'"
    )
    fitted = FittedPreprocessing(
        missing=options.missing,
        scaling=options.scaling,
        fill=_floats(fill),
        centre=_floats(centre),
        spread=_floats(spread),
    )
    return values, PreprocessReport(rows_in, values.shape[0], imputed, kept), fitted


def _floats(array: np.ndarray | None) -> tuple[float, ...] | None:
    return None if array is None else tuple(float(v) for v in array)


@dataclass(frozen=True)
class FittedPreprocessing:
    """What preprocessing learned from training rows, applied the same way to new rows (a saved model).

    ``missing`` None: the training job had no preprocess step, so new rows must be finite as they are.
    ``fill`` is set for the impute policies, ``centre``/``spread`` for a scaling other than none.
    """

    missing: MissingPolicy | None = None
    scaling: Scaling = Scaling.NONE
    fill: tuple[float, ...] | None = None
    centre: tuple[float, ...] | None = None
    spread: tuple[float, ...] | None = None

    def options(self) -> dict[str, str] | None:
        """The job's preprocessing options this came from (None: no preprocess step)."""
        return None if self.missing is None else {"missing": self.missing.value, "scaling": self.scaling.value}

    def apply(self, values: np.ndarray, columns: tuple[str, ...] | list[str]) -> tuple[np.ndarray, PreprocessReport]:
        """``values`` (columns in training order) imputed, dropped and scaled as the training rows were."""
        values = np.array(values, dtype=np.float64, copy=True)
        if values.ndim != 2 or values.shape[1] != len(columns):
            raise InvalidInput(f"expected rows of {len(columns)} values ({list(columns)}), got shape {values.shape}")
        bad = ~np.isfinite(values)
        rows_in = values.shape[0]
        imputed = 0
        kept: list[int] | None = None
        if bad.any():
            if self.missing is None:
                refuse_non_finite(values, columns, "the model was trained without the preprocess step")
            elif self.missing is MissingPolicy.REJECT:
                refuse_non_finite(values, columns, "the model's preprocessing.missing is reject")
            elif self.missing is MissingPolicy.DROP_ROWS:
                keep = ~bad.any(axis=1)
                kept = [int(i) for i in np.flatnonzero(keep)]
                values = values[keep]
                if values.shape[0] == 0:
                    raise InvalidInput("no row remains after dropping rows with NaN/inf (the model drops them)")
            else:
                if self.fill is None or len(self.fill) != len(columns):
                    raise InvalidInput("the model has no imputation values for these columns")
                imputed = int(bad.sum())
                values = np.where(bad, np.asarray(self.fill)[np.newaxis, :], values)
        if self.centre is not None and self.spread is not None:
            with np.errstate(over="ignore", invalid="ignore"):
                values = (values - np.asarray(self.centre)) / np.asarray(self.spread)
        overflow = f"the model's scaling {self.scaling.value!r} overflowed on values this large"
        refuse_non_finite(values, columns, overflow)
        return values, PreprocessReport(rows_in, values.shape[0], imputed, kept)

    def as_dict(self) -> dict[str, Any]:
        return {
            "missing": None if self.missing is None else self.missing.value,
            "scaling": self.scaling.value,
            "fill": None if self.fill is None else list(self.fill),
            "centre": None if self.centre is None else list(self.centre),
            "spread": None if self.spread is None else list(self.spread),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FittedPreprocessing:
        def floats(name: str) -> tuple[float, ...] | None:
            raw = data.get(name)
            return None if raw is None else tuple(float(v) for v in raw)

        missing = data.get("missing")
        return cls(
            missing=None if missing is None else MissingPolicy(missing),
            scaling=Scaling(data.get("scaling", Scaling.NONE.value)),
            fill=floats("fill"),
            centre=floats("centre"),
            spread=floats("spread"),
        )


def _scale_parameters(values: np.ndarray, scaling: Scaling) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Centre and spread of each column (a zero spread becomes 1); (None, None) without scaling."""
    if scaling is Scaling.NONE:
        return None, None
    if scaling is Scaling.STANDARD:
        centre, spread = values.mean(axis=0), values.std(axis=0)
    elif scaling is Scaling.ROBUST:
        q1, centre, q3 = np.percentile(values, [25, 50, 75], axis=0)
        spread = q3 - q1
    else:
        centre, spread = values.min(axis=0), values.max(axis=0) - values.min(axis=0)
    return centre, np.where(spread == 0, 1.0, spread)
