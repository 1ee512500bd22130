"""Detector catalogue: parameter schemas and validation, contamination, and detection on planted anomalies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pynomaly.domain.datasets import DatasetLimits, parse_csv
from pynomaly.domain.detectors import DETECTORS, get_detector, run_detection, validate_contamination
from pynomaly.domain.errors import InvalidInput, JobCancelled

DATA = Path(__file__).resolve().parents[2] / "app" / "pynomaly" / "data"


def test_every_required_detector_is_offered_with_a_json_schema() -> None:
    assert set(DETECTORS) >= {"iforest", "lof", "knn", "ecod", "copod", "hbos", "pca", "ocsvm"}
    for spec in DETECTORS.values():
        schema = spec.schema()
        assert schema["type"] == "object" and schema["additionalProperties"] is False
        for prop in schema["properties"].values():
            assert prop["type"] in {"integer", "number", "string", "boolean"} and "default" in prop


def test_param_validation_fills_defaults_and_coerces() -> None:
    spec = get_detector("IForest")
    assert spec.validate(None) == {"n_estimators": 100, "max_features": 1.0, "random_state": 42}
    assert spec.validate({"n_estimators": 50.0, "max_features": 1})["n_estimators"] == 50
    assert get_detector("knn").validate({"method": "mean"})["method"] == "mean"


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("iforest", {"trees": 5}, "no parameter"),
        ("iforest", {"n_estimators": 0}, ">= 1"),
        ("iforest", {"n_estimators": 2.5}, "integer"),
        ("iforest", {"n_estimators": True}, "integer"),
        ("iforest", {"max_features": "all"}, "number"),
        ("knn", {"method": "max"}, "one of"),
        ("ocsvm", {"nu": 2}, "<= 1.0"),
        ("lof", {"metric": 3}, "string"),
    ],
)
def test_param_rejections(name: str, params: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        get_detector(name).validate(params)


def test_unknown_detector_lists_the_choices() -> None:
    with pytest.raises(InvalidInput, match="choose one of"):
        get_detector("autoencoder")


@pytest.mark.parametrize("value", [0, -0.1, 0.51, 0.7, True, "0.1"])
def test_contamination_bounds(value: object) -> None:
    with pytest.raises(InvalidInput, match="contamination"):
        validate_contamination(value, None)  # type: ignore[arg-type]


def test_contamination_default_and_upper_bound() -> None:
    assert validate_contamination(None, None) == 0.1
    assert validate_contamination(0.5, None) == 0.5


@pytest.fixture(scope="module")
def sensors() -> tuple[np.ndarray, list[str], set[int]]:
    ds = parse_csv((DATA / "sensors.csv").read_bytes(), DatasetLimits(10**7, 10**5, 50))
    planted = {int(x) for x in (DATA / "sensors.planted.txt").read_text().split()}
    return ds.values, list(ds.columns), planted


@pytest.mark.parametrize("name", ["iforest", "ecod", "copod", "pca"])
def test_planted_anomalies_found_with_contributions(name: str, sensors) -> None:  # type: ignore[no-untyped-def]
    values, columns, planted = sensors
    checkpoints: list[float] = []
    result = run_detection(values, columns, name, checkpoint=lambda f, _m: checkpoints.append(f))
    flagged = {i for i, label in enumerate(result.labels) if label}
    assert len(planted & flagged) / len(planted) >= 0.9
    assert checkpoints[0] < checkpoints[-1] == 1.0 and checkpoints == sorted(checkpoints)
    top = result.top_anomalies[0]
    assert set(top["contributions"]) == set(columns)
    assert sum(top["contributions"].values()) == pytest.approx(1.0, abs=1e-3)
    assert result.as_dict()["anomaly_count"] == len(flagged)


def test_explicit_threshold_sets_the_labels(sensors) -> None:  # type: ignore[no-untyped-def]
    values, columns, _ = sensors
    base = run_detection(values, columns, "ecod")
    cut = sorted(base.scores)[-5]
    result = run_detection(values, columns, "ecod", threshold=cut)
    assert result.threshold == cut and result.anomaly_count == 4


def test_checkpoint_can_stop_detection(sensors) -> None:  # type: ignore[no-untyped-def]
    values, columns, _ = sensors

    def stop(fraction: float, _message: str) -> None:
        if fraction >= 0.5:
            raise JobCancelled("stop")

    with pytest.raises(JobCancelled):
        run_detection(values, columns, "iforest", checkpoint=stop)


def test_detection_refuses_nan_and_too_few_rows() -> None:
    with pytest.raises(InvalidInput, match="NaN"):
        run_detection(np.array([[1.0], [np.nan]]), ["a"], "ecod")
    with pytest.raises(InvalidInput, match="at least"):
        run_detection(np.array([[1.0]]), ["a"], "ecod")
