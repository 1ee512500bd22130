"""Trained models: the fitted preprocessing and detector score new rows exactly as the training job did,
and the model store (on the session's real Redis, and on a directory) keeps versions, promotes, deletes
and refuses tampered or foreign artifacts.

The store tests share Redis database 0 with other tests: each uses its own model names and deletes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from pynomaly.config import Settings
from pynomaly.domain.detectors import run_detection
from pynomaly.domain.errors import Conflict, InvalidInput, NotFound
from pynomaly.domain.models import (
    ArtifactRefused,
    ModelRef,
    TrainedModel,
    incompatible_libraries,
    library_versions,
    run_scoring,
)
from pynomaly.domain.preprocessing import FittedPreprocessing, MissingPolicy, PreprocessOptions, Scaling, fit_preprocess
from pynomaly.storage.encryption import MAGIC, BlobCodec, PayloadUnreadable
from pynomaly.storage.models import DirectoryArtifacts, ModelStore, RedisArtifacts, artifact_key

COLUMNS = ["a", "b", "c"]


def training_rows(n: int = 200, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.normal([10.0, -3.0, 100.0], [1.0, 2.0, 15.0], size=(n, 3))
    values[5, 1] = np.nan
    values[17, 0] = np.inf
    values[-1] = [40.0, 30.0, 400.0]  # the planted anomaly
    return values


def train(detector: str = "iforest", missing: str = "impute_median", scaling: str = "robust") -> TrainedModel:
    options = PreprocessOptions.parse({"missing": missing, "scaling": scaling})
    prepared, _, fitted = fit_preprocess(training_rows(), COLUMNS, options, learn=True)
    result = run_detection(prepared, COLUMNS, detector)
    return TrainedModel(detector, result.model, result.threshold, COLUMNS, fitted)


# -- the domain ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("missing", ["impute_median", "impute_mean", "drop_rows"])
@pytest.mark.parametrize("scaling", ["none", "standard", "robust", "minmax"])
def test_fitted_preprocessing_prepares_rows_as_the_training_job_did(missing: str, scaling: str) -> None:
    options = PreprocessOptions.parse({"missing": missing, "scaling": scaling})
    raw = training_rows()
    prepared, report, fitted = fit_preprocess(raw, COLUMNS, options, learn=True)
    again, again_report = fitted.apply(raw, COLUMNS)
    np.testing.assert_allclose(again, prepared, rtol=0, atol=1e-12)
    assert again_report.rows_out == report.rows_out and again_report.cells_imputed == report.cells_imputed
    # And it survives its JSON form (what the detect step reads back from Redis).
    restored = FittedPreprocessing.from_dict(json.loads(json.dumps(fitted.as_dict())))
    np.testing.assert_allclose(restored.apply(raw, COLUMNS)[0], prepared, rtol=0, atol=1e-12)


def test_imputation_values_are_learned_even_when_training_rows_are_complete() -> None:
    complete = np.random.default_rng(3).normal(size=(50, 3))
    _, _, fitted = fit_preprocess(complete, COLUMNS, PreprocessOptions(MissingPolicy.IMPUTE_MEAN), learn=True)
    assert fitted.fill is not None
    np.testing.assert_allclose(fitted.fill, complete.mean(axis=0))
    new = np.array([[np.nan, 0.0, 0.0]])
    assert fitted.apply(new, COLUMNS)[0][0, 0] == pytest.approx(complete[:, 0].mean())


def test_a_model_without_a_preprocess_step_refuses_missing_cells() -> None:
    with pytest.raises(InvalidInput, match=r"1 NaN/inf cell\(s\), first at row 0, column 'b'.*without the preprocess"):
        FittedPreprocessing().apply(np.array([[1.0, np.nan, 2.0]]), COLUMNS)
    reject = FittedPreprocessing(MissingPolicy.REJECT, Scaling.NONE)
    with pytest.raises(InvalidInput, match="missing is reject"):
        reject.apply(np.array([[1.0, np.inf, 2.0]]), COLUMNS)


@pytest.mark.parametrize("detector", ["iforest", "ecod", "knn", "hbos", "pca"])
def test_score_equals_the_estimators_predict_after_an_artifact_round_trip(detector: str) -> None:
    model = TrainedModel.from_artifact(train(detector).to_artifact())
    new = training_rows(80, seed=9)
    new[3, 2] = np.nan  # imputed with the training median
    scores, labels = model.score(new)
    prepared, _ = model.prepare(new)
    np.testing.assert_array_equal(labels, model.estimator.predict(prepared))
    np.testing.assert_allclose(scores, model.estimator.decision_function(prepared))
    assert labels[-1] == 1, "the planted anomaly"
    result = run_scoring(prepared, model)
    assert result.labels == labels.tolist() and result.threshold == model.threshold
    assert result.top_anomalies[0]["row"] == 79 and set(result.top_anomalies[0]["contributions"]) == set(COLUMNS)


def test_columns_are_taken_by_name_in_the_models_order() -> None:
    model = train()
    new = training_rows(30, seed=4)
    shuffled = np.column_stack([new[:, 2], np.zeros(30), new[:, 0], new[:, 1]])
    selected = model.select(["c", "extra", "a", "b"], shuffled)
    np.testing.assert_array_equal(selected, new)
    with pytest.raises(InvalidInput, match=r"no column\(s\) \['b'\]"):
        model.select(["a", "c"], new[:, [0, 2]])
    records = [{"a": 1.0, "b": None, "c": 3.0}]
    assert np.isnan(model.rows_from_records(records)[0, 1])
    with pytest.raises(InvalidInput, match="record 0 has no 'c'"):
        model.rows_from_records([{"a": 1.0, "b": 2.0}])
    with pytest.raises(InvalidInput, match="expected a number, got str"):
        model.rows_from_records([{"a": 1.0, "b": "x", "c": 2.0}])


def test_score_keeps_rows_aligned_for_a_model_that_drops_incomplete_rows() -> None:
    model = train(missing="drop_rows")
    with pytest.raises(InvalidInput, match=r"1 row\(s\) have NaN/inf cells, which this model drops"):
        model.score(np.array([[1.0, np.nan, 2.0], [1.0, 2.0, 3.0]]))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("m", ModelRef("m")), ("sensors-1.v2_x", ModelRef("sensors-1.v2_x")), ("m:3", ModelRef("m", 3))],
)
def test_model_refs_parse(raw: str, expected: ModelRef) -> None:
    assert ModelRef.parse(raw) == expected and str(expected) == raw


@pytest.mark.parametrize("raw", ["", ":1", "m:", "m:0", "m:-1", "m:1.5", "m:x", "-m", "a/b", "m:1:2", "x" * 65, "m:٣"])
def test_bad_model_refs_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInput):
        ModelRef.parse(raw)


def test_library_versions_must_match_major_minor() -> None:
    running = library_versions()
    assert incompatible_libraries(running) == []
    patched = {name: version.split(".")[0] + "." + version.split(".")[1] + ".999" for name, version in running.items()}
    assert incompatible_libraries(patched) == []
    older = {**running, "scikit-learn": "0.1.0"}
    assert incompatible_libraries(older) == [f"scikit-learn 0.1.0 (this process has {running['scikit-learn']})"]


# -- the store ------------------------------------------------------------------------------------------
@pytest.fixture
def url(redis_server: Any) -> str:
    return str(redis_server.url_for_db(0))


@pytest.fixture
def text(url: str) -> Iterator[redis.Redis]:
    value = redis.Redis.from_url(url, decode_responses=True)
    yield value
    value.close()


@pytest.fixture
def blobs(url: str) -> Iterator[redis.Redis]:
    value = redis.Redis.from_url(url)
    yield value
    value.close()


@pytest.fixture
def names(text: redis.Redis) -> Iterator[list[str]]:
    """Model names of one test; deleted with everything kept for them afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        keys = [*text.scan_iter(f"pynomaly:model:{name}*"), *text.scan_iter(f"pynomaly:model-artifact:{name}:*")]
        text.delete(f"pynomaly:model-seq:{name}", *keys)
        text.zrem("pynomaly:models", name)


def new_name(names: list[str]) -> str:
    names.append(f"t-{uuid.uuid4().hex[:12]}")
    return names[-1]


def save(store: ModelStore, name: str, model: TrainedModel | None = None, job: str | None = None) -> Any:
    return store.save(
        name, model or train(), params={"n_estimators": 100}, contamination=0.1, rows=200, training_job=job
    )


@pytest.fixture
def store(text: redis.Redis, blobs: redis.Redis) -> ModelStore:
    return ModelStore(text, RedisArtifacts(blobs), max_versions=3)


@pytest.mark.services
def test_versions_promotion_rollback_and_deletion(store: ModelStore, names: list[str]) -> None:
    name = new_name(names)
    first = save(store, name, job="job-1")
    assert (first.version, first.store, first.training_job, first.columns) == (1, "redis", "job-1", COLUMNS)
    assert first.libraries == library_versions() and len(first.checksum) == 64
    # The first version is promoted at once; later ones only when promoted.
    second = save(store, name, train("ecod"), job="job-2")
    model = store.get(name)
    assert (model.versions, model.promoted, model.latest) == ([1, 2], 1, 2)
    assert store.resolve(ModelRef(name)).version == 1 and store.resolve(ModelRef(name, 2)).detector == "ecod"
    assert store.load(name)[1].detector == "iforest"
    # A redelivered detect step of the same job saves nothing twice.
    assert save(store, name, job="job-2").version == second.version == 2
    assert store.promote(name, 2).promoted == 2
    assert store.load(name)[1].detector == "ecod", "the promoted version is resolved at each load"
    assert store.promote(name, 1).promoted == 1  # rollback
    with pytest.raises(Conflict, match="version 1 is the promoted version"):
        store.delete_version(name, 1)
    store.delete_version(name, 2)
    assert store.get(name).versions == [1] and store.get(name).latest == 1
    with pytest.raises(NotFound, match="has no version 2"):
        store.version(name, 2)
    with pytest.raises(NotFound, match="has no version 7"):
        store.promote(name, 7)
    # Version numbers are never reused: not after deleting a version, nor after deleting the model.
    assert save(store, name, job="job-3").version == 3
    assert store.delete(name).versions == [1, 3]
    with pytest.raises(NotFound, match="no model"):
        store.get(name)
    assert not list(store._r.scan_iter(f"pynomaly:model:{name}*"))
    assert store._r.exists(artifact_key(name, 1)) == 0
    assert save(store, name).version == 4
    assert store.get(name).promoted == 4


@pytest.mark.services
def test_old_versions_beyond_the_limit_are_pruned_but_never_the_promoted_one(
    store: ModelStore, names: list[str]
) -> None:
    name = new_name(names)
    model = train()
    for _ in range(5):
        save(store, name, model)
    kept = store.get(name)
    assert kept.versions == [1, 4, 5] and kept.promoted == 1
    assert store._r.exists(artifact_key(name, 2)) == 0 and store._r.exists(artifact_key(name, 4)) == 1


@pytest.mark.services
def test_model_count_is_bounded(text: redis.Redis, blobs: redis.Redis, names: list[str]) -> None:
    store = ModelStore(text, RedisArtifacts(blobs), max_models=int(text.zcard("pynomaly:models")) + 1)
    save(store, new_name(names))
    with pytest.raises(Conflict, match="models are stored already"):
        store.check_room(new_name(names))
    store.check_room(names[0])  # a new version of a stored model is fine


@pytest.mark.services
def test_a_tampered_artifact_is_refused_before_it_is_unpickled(
    store: ModelStore, blobs: redis.Redis, names: list[str]
) -> None:
    name = new_name(names)
    meta = save(store, name)
    key = artifact_key(name, 1)
    raw = bytearray(blobs.get(key) or b"")
    assert hashlib.sha256(raw).hexdigest() == meta.checksum
    raw[len(raw) // 2] ^= 0x01
    blobs.set(key, bytes(raw))
    with pytest.raises(ArtifactRefused, match=f"model {name}:1: the artifact's sha256 is .* not the {meta.checksum}"):
        ModelStore(store._r, RedisArtifacts(blobs)).load(name)
    blobs.delete(key)
    with pytest.raises(NotFound, match="artifact is missing"):
        ModelStore(store._r, RedisArtifacts(blobs)).load(f"{name}:1")


@pytest.mark.services
def test_an_artifact_of_other_library_versions_is_refused(
    store: ModelStore, text: redis.Redis, names: list[str]
) -> None:
    name = new_name(names)
    save(store, name)
    key = f"pynomaly:model:{name}:v1"
    meta = json.loads(text.get(key) or "{}")
    meta["libraries"]["scikit-learn"] = "0.99.0"
    text.set(key, json.dumps(meta))
    with pytest.raises(ArtifactRefused, match=r"saved with scikit-learn 0.99.0 \(this process has"):
        store.load(name)


@pytest.mark.services
def test_loaded_models_are_cached_per_version(store: ModelStore, names: list[str]) -> None:
    name = new_name(names)
    save(store, name)
    first = store.load(name)[1]
    assert store.load(f"{name}:1")[1] is first
    save(store, name, train("hbos"))
    store.promote(name, 2)
    assert store.load(name)[1].detector == "hbos" and store.load(name)[1] is not first


@pytest.mark.services
def test_artifacts_are_sealed_with_the_encryption_codec(
    text: redis.Redis, blobs: redis.Redis, names: list[str]
) -> None:
    codec = BlobCodec((os.urandom(32),), enabled=True)
    store = ModelStore(text, RedisArtifacts(blobs, codec))
    name = new_name(names)
    model = train()
    save(store, name, model)
    stored = blobs.get(artifact_key(name, 1)) or b""
    assert stored.startswith(MAGIC) and b"IForest" not in stored
    loaded = ModelStore(text, RedisArtifacts(blobs, codec)).load(name)[1]
    rows = training_rows(20, seed=5)
    np.testing.assert_array_equal(loaded.score(rows)[1], model.score(rows)[1])
    tampered = bytearray(stored)
    tampered[-1] ^= 0x01
    blobs.set(artifact_key(name, 1), bytes(tampered))
    with pytest.raises(PayloadUnreadable, match="failed authentication"):
        ModelStore(text, RedisArtifacts(blobs, codec)).load(name)


@pytest.mark.services
def test_the_directory_backend(tmp_path: Path, text: redis.Redis, names: list[str]) -> None:
    codec = BlobCodec()  # no encryption: the file is the artifact itself
    store = ModelStore(text, DirectoryArtifacts(tmp_path / "models", codec))
    name = new_name(names)
    meta = save(store, name)
    path = tmp_path / "models" / name / "1.model"
    assert meta.store == "dir" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert hashlib.sha256(path.read_bytes()).hexdigest() == meta.checksum
    assert store.load(name)[1].detector == "iforest"
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactRefused, match="sha256"):
        ModelStore(text, DirectoryArtifacts(tmp_path / "models", codec)).load(name)
    store.delete(name)
    assert not (tmp_path / "models" / name).exists()


def test_the_model_store_setting_is_validated() -> None:
    assert Settings().model_store == "redis"
    assert Settings(model_store="dir:/var/lib/models").model_store == "dir:/var/lib/models"
    for bad in ("s3://bucket", "dir:relative", "dir:", "REDIS"):
        with pytest.raises(ValueError, match=r"redis or dir:/absolute/path|absolute directory"):
            Settings(model_store=bad)


def test_idempotency_fingerprints_of_detect_jobs_are_unchanged_and_scoring_jobs_use_the_model_named() -> None:
    from dataclasses import replace

    from pynomaly.domain.datasets import Dataset
    from pynomaly.domain.jobs import Job
    from pynomaly.usecases.jobs import _fingerprint

    job = Job(
        id="x",
        detector="ecod",
        params={},
        contamination=0.1,
        threshold=None,
        priority="normal",
        steps=["preprocess", "detect"],
        preprocessing={"missing": "impute_median", "scaling": "none"},
        dataset={},
    )
    data = Dataset(("a",), np.zeros((2, 1)))
    # The fingerprint a claim stored before models existed: an upgrade keeps pending keys valid.
    assert _fingerprint(job, data) == "cd632ba00a1e9b32a646c55f3a56ad071e9178bc084ec04206b566158159934b"
    assert _fingerprint(replace(job, save_model="m"), data) != _fingerprint(job, data)
    scoring = replace(job, mode="score", model="m", model_version=1)
    promoted = replace(scoring, model_version=2, detector="iforest", threshold=0.3)
    assert _fingerprint(scoring, data, "m") == _fingerprint(promoted, data, "m")
    assert _fingerprint(scoring, data, "m") != _fingerprint(scoring, data, "m:1")
