"""Detectors: the PyOD models a job may ask for, their parameter schemas, and running one.

``run_detection`` calls back at checkpoints so the caller can report progress and stop a
cancelled job; it never talks to a queue itself.

The library calls (building the model, fitting, scoring, contributions) are the boundary of
deterministic failures: what numpy, scikit-learn and PyOD raise there on the job's data
(:data:`LIBRARY_ERRORS`) becomes :class:`~pynomaly.domain.errors.DetectorFailed`, which names the
detector and the error and fails the job at once.  The checkpoints stay outside that boundary: a
Redis error there is a transport error, retried like any other.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pynomaly.domain.errors import DetectorFailed, InvalidInput

# Scoring runs in chunks so a long job reports progress and can be cancelled between them.
SCORE_CHUNK_ROWS = 5000
DEFAULT_CONTAMINATION = 0.1
MAX_CONTAMINATION = 0.5
DEFAULT_TOP_N = 10
# What numerical code raises on data it cannot handle, the same way on every run: ValueError (and
# numpy's LinAlgError, a ValueError), ArithmeticError (FloatingPointError, ZeroDivisionError,
# OverflowError), TypeError and IndexError from shapes and dtypes it did not expect.
LIBRARY_ERRORS: tuple[type[Exception], ...] = (ValueError, ArithmeticError, TypeError, IndexError)


@dataclass(frozen=True)
class Param:
    name: str
    type: type
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None

    def json_schema(self) -> dict[str, Any]:
        kind = {int: "integer", float: "number", str: "string", bool: "boolean"}[self.type]
        schema: dict[str, Any] = {"type": kind, "default": self.default, "description": self.description}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.choices is not None:
            schema["enum"] = list(self.choices)
        return schema

    def coerce(self, value: Any) -> Any:
        if self.type is bool:
            if not isinstance(value, bool):
                raise InvalidInput(f"parameter {self.name!r} must be true or false")
            return value
        if self.type is int and (isinstance(value, bool) or not isinstance(value, int)):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise InvalidInput(f"parameter {self.name!r} must be an integer")
        if self.type is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput(f"parameter {self.name!r} must be a number")
            value = float(value)
        if self.type is str and not isinstance(value, str):
            raise InvalidInput(f"parameter {self.name!r} must be a string")
        if self.choices is not None and value not in self.choices:
            raise InvalidInput(f"parameter {self.name!r} must be one of {list(self.choices)}")
        if self.minimum is not None and value < self.minimum:
            raise InvalidInput(f"parameter {self.name!r} must be >= {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise InvalidInput(f"parameter {self.name!r} must be <= {self.maximum}")
        return value


@dataclass(frozen=True)
class DetectorSpec:
    name: str
    pyod_class: str  # "module:Class"
    description: str
    params: tuple[Param, ...] = ()
    # Detectors with per-dimension outlier scores (PyOD's ``O`` matrix) give exact contributions.
    per_feature_scores: bool = False
    # Scores of new rows depend on the other rows scored with them (ECOD/COPOD rank each new row among
    # the training rows and the whole batch): a saved model scores them in one call, never in chunks.
    batch_dependent: bool = False
    min_rows: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {p.name: p.json_schema() for p in self.params},
        }

    def validate(self, params: dict[str, Any] | None) -> dict[str, Any]:
        params = dict(params or {})
        known = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise InvalidInput(f"detector {self.name!r} has no parameter(s) {unknown}; it takes {sorted(known)}")
        return {name: p.coerce(params[name]) if name in params else p.default for name, p in known.items()}


_N_NEIGHBORS = Param("n_neighbors", int, 20, "Neighbours considered per point", minimum=1, maximum=1000)

DETECTORS: dict[str, DetectorSpec] = {
    spec.name: spec
    for spec in (
        DetectorSpec(
            "iforest",
            "pyod.models.iforest:IForest",
            "Isolation Forest: isolates points with random splits",
            (
                Param("n_estimators", int, 100, "Number of trees", minimum=1, maximum=2000),
                Param("max_features", float, 1.0, "Fraction of features per tree", minimum=0.01, maximum=1.0),
                Param("random_state", int, 42, "Seed, for reproducible results", minimum=0),
            ),
        ),
        DetectorSpec(
            "lof",
            "pyod.models.lof:LOF",
            "Local Outlier Factor: density compared with neighbours",
            (
                _N_NEIGHBORS,
                Param("metric", str, "minkowski", "Distance", choices=("minkowski", "euclidean", "manhattan")),
            ),
        ),
        DetectorSpec(
            "knn",
            "pyod.models.knn:KNN",
            "k nearest neighbours distance",
            (
                Param("n_neighbors", int, 5, "Neighbours considered per point", minimum=1, maximum=1000),
                Param("method", str, "largest", "Distance aggregate", choices=("largest", "mean", "median")),
            ),
        ),
        DetectorSpec(
            "ecod",
            "pyod.models.ecod:ECOD",
            "Empirical CDF outlier detection",
            per_feature_scores=True,
            batch_dependent=True,
        ),
        DetectorSpec(
            "copod",
            "pyod.models.copod:COPOD",
            "Copula-based outlier detection",
            per_feature_scores=True,
            batch_dependent=True,
        ),
        DetectorSpec(
            "hbos",
            "pyod.models.hbos:HBOS",
            "Histogram-based outlier score",
            (Param("n_bins", int, 10, "Histogram bins per feature", minimum=2, maximum=500),),
        ),
        DetectorSpec(
            "pca",
            "pyod.models.pca:PCA",
            "Reconstruction error on principal components",
            (Param("random_state", int, 42, "Seed", minimum=0),),
        ),
        DetectorSpec(
            "ocsvm",
            "pyod.models.ocsvm:OCSVM",
            "One-class SVM",
            (
                Param("kernel", str, "rbf", "Kernel", choices=("rbf", "linear", "poly", "sigmoid")),
                Param("nu", float, 0.5, "Upper bound on the training error fraction", minimum=0.001, maximum=1.0),
            ),
        ),
    )
}


def get_detector(name: str) -> DetectorSpec:
    try:
        return DETECTORS[name.lower()]
    except KeyError:
        raise InvalidInput(f"unknown detector {name!r}; choose one of {sorted(DETECTORS)}") from None


def validate_contamination(contamination: float | None, threshold: float | None) -> float:
    """Contamination in (0, 0.5]; with an explicit threshold it only sizes PyOD's own labels."""
    # A NaN threshold labels nothing and an infinite one everything or nothing: both are mistakes
    # ("NaN" and "inf" parse as floats, from JSON strings and form fields alike).
    if isinstance(threshold, float) and not math.isfinite(threshold):
        raise InvalidInput(f"threshold must be a finite number, got {threshold}")
    if contamination is None:
        return DEFAULT_CONTAMINATION
    if isinstance(contamination, bool) or not isinstance(contamination, int | float):
        raise InvalidInput("contamination must be a number")
    if not 0 < contamination <= MAX_CONTAMINATION:
        raise InvalidInput(f"contamination must be > 0 and <= {MAX_CONTAMINATION}, got {contamination}")
    return float(contamination)


@dataclass
class DetectionResult:
    detector: str
    params: dict[str, Any]
    threshold: float
    scores: list[float]
    labels: list[int]
    top_anomalies: list[dict[str, Any]]
    columns: list[str]
    # The fitted PyOD estimator (what a job's save_model stores); not part of the result document.
    model: Any = field(default=None, repr=False, compare=False)

    @property
    def anomaly_count(self) -> int:
        return int(sum(self.labels))

    def as_dict(self) -> dict[str, Any]:
        n = len(self.labels)
        return {
            "detector": self.detector,
            "params": self.params,
            "threshold": self.threshold,
            "rows": n,
            "anomaly_count": self.anomaly_count,
            "anomaly_rate": self.anomaly_count / n if n else 0.0,
            "columns": self.columns,
            "scores": self.scores,
            "labels": self.labels,
            "top_anomalies": self.top_anomalies,
        }


Checkpoint = Callable[[float, str], None]


def run_detection(
    values: np.ndarray,
    columns: list[str],
    detector: str,
    params: dict[str, Any] | None = None,
    contamination: float | None = None,
    threshold: float | None = None,
    top_n: int = DEFAULT_TOP_N,
    checkpoint: Checkpoint | None = None,
) -> DetectionResult:
    """Fit ``detector`` on ``values`` and score every row.

    ``checkpoint(fraction, message)`` runs between phases and scoring chunks; it may raise to stop.
    """
    spec = get_detector(detector)
    clean = spec.validate(params)
    contamination = validate_contamination(contamination, threshold)
    if not np.isfinite(values).all():
        raise InvalidInput("dataset has NaN or infinite values; preprocess with impute or reject first")
    rows = values.shape[0]
    if rows < spec.min_rows:
        raise InvalidInput(f"detector {spec.name!r} needs at least {spec.min_rows} rows, got {rows}")
    step = checkpoint or (lambda _f, _m: None)

    model_params = dict(clean)
    if "n_neighbors" in model_params:
        model_params["n_neighbors"] = min(model_params["n_neighbors"], rows - 1)
    module_name, class_name = spec.pyod_class.split(":")
    model_class = getattr(importlib.import_module(module_name), class_name)

    step(0.1, f"fitting {spec.name} on {rows} rows")
    with _library_call(spec, "fitting", values):
        model = model_class(contamination=contamination, **model_params)
        model.fit(values)
    step(0.5, "fitted; scoring")

    scores = np.empty(rows, dtype=np.float64)
    for start in range(0, rows, SCORE_CHUNK_ROWS):
        stop = min(start + SCORE_CHUNK_ROWS, rows)
        with _library_call(spec, "scoring", values):
            scores[start:stop] = model.decision_scores_[start:stop]
        step(0.5 + 0.4 * stop / rows, f"scored {stop}/{rows} rows")

    with _library_call(spec, "ranking the anomalies of", values):
        cut = float(threshold) if threshold is not None else float(model.threshold_)
        labels = (scores > cut).astype(int)
        contributions = _contributions(model, values, spec)
        top = _top_anomalies(scores, labels, values, columns, contributions, top_n)
    step(1.0, f"{int(labels.sum())} anomalies in {rows} rows")
    return DetectionResult(
        detector=spec.name,
        params=clean,
        threshold=cut,
        scores=scores.tolist(),  # Python floats and ints, as the comprehensions gave, 10x faster
        labels=labels.tolist(),
        top_anomalies=top,
        columns=list(columns),
        model=model,
    )


@contextmanager
def _library_call(spec: DetectorSpec, phase: str, values: np.ndarray) -> Iterator[None]:
    """Turn a library's deterministic error on this data into a clear, permanent DetectorFailed."""
    try:
        yield
    except LIBRARY_ERRORS as exc:
        rows, cols = values.shape
        largest = float(np.abs(values).max()) if values.size else 0.0
        raise DetectorFailed(
            f"detector {spec.name!r} failed {phase} the data ({rows} rows x {cols} columns, largest "
            f"|value| {largest:.3g}): {type(exc).__name__}: {str(exc).rstrip('.')}. The same data fails the same way "
            "again: check it for extreme or degenerate values, scale it (preprocessing.scaling) "
            "or choose another detector"
        ) from exc


def _contributions(model: Any, values: np.ndarray, spec: DetectorSpec) -> tuple[np.ndarray, str]:
    """Per-feature share of each row's outlyingness.

    ECOD/COPOD expose per-dimension tail scores (``O``); for the others a robust z-score per feature
    (distance from the median in MADs) says which features made the row unusual.
    """
    per_dim = getattr(model, "O", None) if spec.per_feature_scores else None
    if isinstance(per_dim, np.ndarray) and per_dim.shape == values.shape:
        raw, method = np.clip(per_dim, 0, None), "per_dimension_tail_probability"
    else:
        median = np.median(values, axis=0)
        mad = np.median(np.abs(values - median), axis=0) * 1.4826
        mad[mad == 0] = 1.0
        raw, method = np.abs(values - median) / mad, "robust_zscore"
    totals = raw.sum(axis=1, keepdims=True)
    totals[totals == 0] = 1.0
    return raw / totals, method


def _top_anomalies(
    scores: np.ndarray,
    labels: np.ndarray,
    values: np.ndarray,
    columns: list[str],
    contributions: tuple[np.ndarray, str],
    top_n: int,
) -> list[dict[str, Any]]:
    shares, method = contributions
    flagged = np.flatnonzero(labels)
    ranked = flagged[np.argsort(-scores[flagged], kind="stable")][:top_n]
    return [
        {
            "row": int(i),
            "score": float(scores[i]),
            "values": {c: float(v) for c, v in zip(columns, values[i], strict=True)},
            "contributions": {c: round(float(s), 6) for c, s in zip(columns, shares[i], strict=True)},
            "contribution_method": method,
        }
        for i in ranked
    ]
