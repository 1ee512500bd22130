"""Trained models: a fitted detector with everything needed to score new rows the way it was trained.

A job with ``save_model`` turns its fitted PyOD estimator, the threshold it cut at, the preprocessing
it learned (imputation values, scaling parameters) and its feature columns into a
:class:`TrainedModel`, stored as a versioned binary artifact (:mod:`pynomaly.storage.models`).
:meth:`TrainedModel.score` is the one way to use it: batch scoring jobs and live scorers call it on
raw rows and get the same scores and labels as ``estimator.predict`` on the same prepared rows.

The artifact is a gzip'd pickle: loading one runs code, so the store only unpickles bytes whose
SHA-256 matches the checksum recorded when the version was saved, and only under the same
major.minor versions of the libraries that wrote it (:func:`incompatible_libraries`).
"""

from __future__ import annotations

import gzip
import importlib.metadata
import pickle
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pynomaly.domain.detectors import (
    DEFAULT_TOP_N,
    SCORE_CHUNK_ROWS,
    Checkpoint,
    DetectionResult,
    _contributions,
    _library_call,
    _top_anomalies,
    get_detector,
)
from pynomaly.domain.errors import DomainError, InvalidInput
from pynomaly.domain.jobs import utcnow
from pynomaly.domain.preprocessing import FittedPreprocessing, PreprocessReport

ARTIFACT_FORMAT = 1
# The libraries whose pickled objects an artifact holds; major.minor must match to load it.
LIBRARIES = ("pyod", "scikit-learn", "numpy")
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
MAX_VERSION = 1_000_000_000


class ArtifactRefused(DomainError):
    """A stored model cannot be used: its checksum or the library versions that wrote it do not match.

    A DomainError: a job that needs the model fails at once (retrying reads the same bytes)."""

    status = 409
    title = "Model artifact refused"


def validate_model_name(value: object, what: str = "model name") -> str:
    if not isinstance(value, str) or not _MODEL_NAME.fullmatch(value):
        raise InvalidInput(
            f"{what} must be 1-64 characters of letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return value


def validate_version(value: object, what: str = "model version") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VERSION:
        raise InvalidInput(f"{what} must be an integer from 1 to {MAX_VERSION}")
    return value


@dataclass(frozen=True)
class ModelRef:
    """``name`` or ``name:version``; without a version the model's promoted version is meant."""

    name: str
    version: int | None = None

    @classmethod
    def parse(cls, raw: object) -> ModelRef:
        if not isinstance(raw, str):
            raise InvalidInput("model must be a string '<name>[:version]'")
        name, sep, version = raw.partition(":")
        validate_model_name(name, "model name")
        if not sep:
            return cls(name)
        if not version.isascii() or not version.isdigit():
            raise InvalidInput(f"model {raw!r}: the version after ':' must be a positive integer")
        return cls(name, validate_version(int(version)))

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}:{self.version}"


def library_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in LIBRARIES}


def _major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def incompatible_libraries(saved: Mapping[str, str], running: Mapping[str, str] | None = None) -> list[str]:
    """Libraries whose major.minor differs between the artifact's writer and this process, described."""
    running = running or library_versions()
    return [
        f"{name} {saved.get(name, 'unknown')} (this process has {running[name]})"
        for name in LIBRARIES
        if _major_minor(saved.get(name, "")) != _major_minor(running[name])
    ]


@dataclass
class ModelVersion:
    """One stored version's metadata (plain JSON: listing needs no artifact and no key)."""

    name: str
    version: int
    detector: str
    params: dict[str, Any]
    contamination: float
    threshold: float
    columns: list[str]
    preprocessing: dict[str, Any]  # FittedPreprocessing.as_dict()
    rows: int
    checksum: str  # sha256 hex of the artifact bytes
    size_bytes: int
    libraries: dict[str, str]
    store: str  # the artifact backend that holds it: redis or dir
    training_job: str | None = None
    created_by: str | None = None
    created_at: str = field(default_factory=utcnow)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelVersion:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def fitted_preprocessing(self) -> FittedPreprocessing:
        return FittedPreprocessing.from_dict(self.preprocessing)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass
class Model:
    """A named model: its versions (ascending) and the promoted one, which ``name`` alone means."""

    name: str
    versions: list[int] = field(default_factory=list)
    promoted: int | None = None
    latest: int | None = None
    created_at: str = field(default_factory=utcnow)
    updated_at: str = field(default_factory=utcnow)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Model:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class TrainedModel:
    """A fitted detector ready to score raw rows: preprocessing, column order, estimator, threshold.

    Thread-safe: some estimators (ECOD, COPOD) keep state from their last ``decision_function``
    call, so scoring holds a lock per model.
    """

    def __init__(
        self,
        detector: str,
        estimator: Any,
        threshold: float,
        columns: Sequence[str],
        preprocessing: FittedPreprocessing,
    ) -> None:
        self.detector = get_detector(detector).name
        self.estimator = estimator
        self.threshold = float(threshold)
        self.columns = list(columns)
        self.preprocessing = preprocessing
        self._lock = threading.Lock()

    # -- artifact --------------------------------------------------------------------------------
    def to_artifact(self) -> bytes:
        payload = {
            "format": ARTIFACT_FORMAT,
            "detector": self.detector,
            "estimator": self.estimator,
            "threshold": self.threshold,
            "columns": self.columns,
            "preprocessing": self.preprocessing.as_dict(),
            "libraries": library_versions(),
        }
        return gzip.compress(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL), compresslevel=5)

    @classmethod
    def from_artifact(cls, data: bytes) -> TrainedModel:
        """Unpickle an artifact.  Only for bytes whose checksum was verified (the store does it)."""
        # Verified against the sha256 recorded at save before it reaches here.
        payload = pickle.loads(gzip.decompress(data))
        if not isinstance(payload, dict) or payload.get("format") != ARTIFACT_FORMAT:
            raise ArtifactRefused(f"the artifact is not a format {ARTIFACT_FORMAT} Pynomaly model")
        return cls(
            payload["detector"],
            payload["estimator"],
            payload["threshold"],
            payload["columns"],
            FittedPreprocessing.from_dict(payload["preprocessing"]),
        )

    # -- scoring ---------------------------------------------------------------------------------
    def select(self, columns: Sequence[str], values: np.ndarray) -> np.ndarray:
        """``values`` (with ``columns``) reduced to the model's feature columns, in training order."""
        index = {name: i for i, name in enumerate(columns)}
        missing = [c for c in self.columns if c not in index]
        if missing:
            raise InvalidInput(f"the data has no column(s) {missing}; the model was trained on {self.columns}")
        order = [index[c] for c in self.columns]
        return np.asarray(values, dtype=np.float64)[:, order]

    def rows_from_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Records (``{"column": number, ...}``) as a matrix in the model's column order; None is missing."""
        matrix = np.empty((len(records), len(self.columns)), dtype=np.float64)
        for i, record in enumerate(records):
            for j, name in enumerate(self.columns):
                if name not in record:
                    raise InvalidInput(f"record {i} has no {name!r}; the model needs {self.columns}")
                value = record[name]
                if value is None:
                    matrix[i, j] = np.nan
                elif isinstance(value, bool) or not isinstance(value, int | float):
                    raise InvalidInput(f"record {i}, {name!r}: expected a number, got {type(value).__name__}")
                else:
                    matrix[i, j] = float(value)
        return matrix

    def prepare(self, values: np.ndarray) -> tuple[np.ndarray, PreprocessReport]:
        """Raw rows (model column order) imputed and scaled with the training values."""
        return self.preprocessing.apply(values, self.columns)

    def decision_function(self, prepared: np.ndarray, checkpoint: Checkpoint | None = None) -> np.ndarray:
        """Scores of prepared rows; in chunks (with ``checkpoint`` between them) unless the detector's
        scores depend on the batch."""
        spec = get_detector(self.detector)
        rows = prepared.shape[0]
        chunk = rows if spec.batch_dependent else SCORE_CHUNK_ROWS
        scores = np.empty(rows, dtype=np.float64)
        with self._lock:
            for start in range(0, rows, max(chunk, 1)):
                stop = min(start + chunk, rows)
                with _library_call(spec, "scoring", prepared):
                    scores[start:stop] = np.asarray(self.estimator.decision_function(prepared[start:stop]))
                if checkpoint is not None:
                    checkpoint(stop / rows, f"scored {stop}/{rows} rows")
        return scores

    def score(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and 0/1 labels (score > threshold) of raw rows in the model's column order, one per row.

        A model that drops rows with missing cells (``drop_rows``) refuses such rows here instead:
        the answer must stay aligned with the rows given."""
        prepared, report = self.prepare(values)
        if report.rows_out != report.rows_in:
            raise InvalidInput(
                f"{report.rows_in - report.rows_out} row(s) have NaN/inf cells, which this model drops "
                "(preprocessing.missing drop_rows): send complete rows"
            )
        scores = self.decision_function(prepared)
        return scores, (scores > self.threshold).astype(int)


def run_scoring(
    values: np.ndarray,
    model: TrainedModel,
    top_n: int = DEFAULT_TOP_N,
    checkpoint: Checkpoint | None = None,
) -> DetectionResult:
    """Score prepared rows (model column order) with a stored model: no refit.  The result has the
    shape of :func:`~pynomaly.domain.detectors.run_detection`'s, so reports and events are the same."""
    spec = get_detector(model.detector)
    step = checkpoint or (lambda _f, _m: None)
    rows = values.shape[0]
    if rows == 0:
        raise InvalidInput("no rows to score")
    step(0.1, f"scoring {rows} rows with {spec.name}")
    scores = model.decision_function(values, lambda f, m: step(0.1 + 0.8 * f, m))
    with _library_call(spec, "ranking the anomalies of", values):
        labels = (scores > model.threshold).astype(int)
        contributions = _contributions(model.estimator, values, spec)
        top = _top_anomalies(scores, labels, values, model.columns, contributions, top_n)
    step(1.0, f"{int(labels.sum())} anomalies in {rows} rows")
    return DetectionResult(
        detector=spec.name,
        params={},
        threshold=model.threshold,
        scores=[float(s) for s in scores],
        labels=[int(v) for v in labels],
        top_anomalies=top,
        columns=list(model.columns),
        model=model.estimator,
    )
