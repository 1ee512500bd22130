"""The model store: versioned trained models, their metadata in Redis and their artifacts in a backend.

Redis keys (metadata stays plain JSON, like job documents, so listing needs no encryption key):

- ``pynomaly:models``: sorted set of model names (score: creation time)
- ``pynomaly:model:<name>``: the model record (versions, promoted, latest)
- ``pynomaly:model:<name>:v<N>``: one version's metadata (:class:`~pynomaly.domain.models.ModelVersion`)
- ``pynomaly:model-seq:<name>``: the version counter; kept when the model is deleted, so a version
  number is never reused and a job result's ``name:version`` always meant one artifact

Artifacts (``PYNOMALY_MODEL_STORE``): ``redis`` (the default, for dev and local) keeps them under
``pynomaly:model-artifact:<name>:<N>``, admitted against Redis' memory like datasets; ``dir:/path``
writes ``/path/<name>/<N>.model`` (a PersistentVolume in a cluster).  Both pass the bytes through the
encryption-at-rest codec (:mod:`pynomaly.storage.encryption`), named by their key or relative path.

:meth:`ModelStore.load` is the seam for everything that scores: it resolves ``name`` to the promoted
version at each call (one Redis read), and keeps loaded models per process by (name, version,
checksum), verified once: checksum first, then library versions, only then unpickled.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import redis

from pynomaly.config import parse_model_store
from pynomaly.domain.errors import Conflict, InsufficientStorage, InvalidInput, NotFound
from pynomaly.domain.jobs import utcnow
from pynomaly.domain.models import (
    ArtifactRefused,
    Model,
    ModelRef,
    ModelVersion,
    TrainedModel,
    incompatible_libraries,
    library_versions,
    validate_model_name,
)
from pynomaly.storage.encryption import PLAIN, BlobCodec
from pynomaly.storage.memory import MemoryAdmission
from pynomaly.storage.redis_client import KEY_PREFIX, delete_document, update_document

MODEL_INDEX = f"{KEY_PREFIX}models"
# Bumped in the same transaction as every change of what a model name or a stream binding means: a
# live scorer reads it once per poll batch and re-resolves its models and bindings when it moved.
SCORING_GENERATION = f"{KEY_PREFIX}scoring:generation"
# Loaded models kept per process; a fitted forest or a KNN's training matrix can be large.
CACHE_SIZE = 8


def _model_key(name: str) -> str:
    return f"{KEY_PREFIX}model:{name}"


def _version_key(name: str, version: int) -> str:
    return f"{KEY_PREFIX}model:{name}:v{version}"


def _seq_key(name: str) -> str:
    return f"{KEY_PREFIX}model-seq:{name}"


def artifact_key(name: str, version: int) -> str:
    """The Redis key of an artifact in the redis backend (tests flip a byte of it)."""
    return f"{KEY_PREFIX}model-artifact:{name}:{version}"


class ArtifactBackend(Protocol):
    kind: str

    def put(self, name: str, version: int, data: bytes) -> None: ...

    def get(self, name: str, version: int) -> bytes | None: ...

    def delete(self, name: str, version: int) -> None: ...


class RedisArtifacts:
    """Artifacts as binary Redis strings, admitted against Redis' memory before they are written."""

    kind = "redis"

    def __init__(self, blobs: redis.Redis, codec: BlobCodec = PLAIN, admission: MemoryAdmission | None = None) -> None:
        self._b = blobs
        self._codec = codec
        self._admission = admission

    def put(self, name: str, version: int, data: bytes) -> None:
        if self._admission is not None:
            self._admission.check(len(data), what="model artifact")
        key = artifact_key(name, version)
        try:
            self._b.set(key, self._codec.seal(key, data))
        except redis.exceptions.OutOfMemoryError as exc:
            raise InsufficientStorage(f"Redis refused the model artifact (it is at its maxmemory): {exc}") from exc

    def get(self, name: str, version: int) -> bytes | None:
        key = artifact_key(name, version)
        raw = self._b.get(key)
        return None if raw is None else self._codec.open(key, raw)

    def delete(self, name: str, version: int) -> None:
        self._b.delete(artifact_key(name, version))


class DirectoryArtifacts:
    """Artifacts as files under ``root`` (a PersistentVolume): ``<name>/<version>.model``, 0600,
    written to a temporary file and renamed, so a reader never sees half an artifact."""

    kind = "dir"

    def __init__(self, root: Path, codec: BlobCodec = PLAIN) -> None:
        self._root = root
        self._codec = codec

    def _path(self, name: str, version: int) -> tuple[Path, str]:
        relative = f"{name}/{version}.model"
        return self._root / relative, relative

    def put(self, name: str, version: int, data: bytes) -> None:
        path, relative = self._path(name, version)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(self._codec.seal(relative, data))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)

    def get(self, name: str, version: int) -> bytes | None:
        path, relative = self._path(name, version)
        try:
            return self._codec.open(relative, path.read_bytes())
        except FileNotFoundError:
            return None

    def delete(self, name: str, version: int) -> None:
        path, _ = self._path(name, version)
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # removed only when it held the model's last artifact
            path.parent.rmdir()


class ModelStore:
    def __init__(
        self,
        client: redis.Redis,
        artifacts: ArtifactBackend,
        max_models: int = 1000,
        max_versions: int = 50,
        max_artifact_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self._r = client
        self._artifacts = artifacts
        self._max_models = max_models
        self._max_versions = max_versions
        self._max_artifact_bytes = max_artifact_bytes
        self._cache: OrderedDict[tuple[str, int, str], TrainedModel] = OrderedDict()
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------------
    def get(self, name: str) -> Model:
        raw = self._r.get(_model_key(validate_model_name(name)))
        if raw is None:
            raise NotFound(f"no model {name!r}")
        return Model.from_dict(json.loads(raw))

    def exists(self, name: str) -> bool:
        return bool(self._r.exists(_model_key(name)))

    def list(self, offset: int = 0, limit: int = 50) -> tuple[builtins.list[Model], int]:
        """Newest first."""
        total = int(self._r.zcard(MODEL_INDEX))
        names = self._r.zrevrange(MODEL_INDEX, offset, offset + limit - 1) if limit else []
        raws = self._r.mget([_model_key(n) for n in names]) if names else []
        return [Model.from_dict(json.loads(raw)) for raw in raws if raw is not None], total

    def version(self, name: str, version: int) -> ModelVersion:
        raw = self._r.get(_version_key(validate_model_name(name), version))
        if raw is None:
            if not self.exists(name):
                raise NotFound(f"no model {name!r}")
            raise NotFound(f"model {name!r} has no version {version}")
        return ModelVersion.from_dict(json.loads(raw))

    def versions(self, name: str) -> builtins.list[ModelVersion]:
        model = self.get(name)
        raws = self._r.mget([_version_key(name, v) for v in model.versions]) if model.versions else []
        return [ModelVersion.from_dict(json.loads(raw)) for raw in raws if raw is not None]

    def resolve(self, ref: ModelRef) -> ModelVersion:
        """The version ``ref`` names: its own, or the model's promoted one (read now)."""
        if ref.version is not None:
            return self.version(ref.name, ref.version)
        model = self.get(ref.name)
        if model.promoted is None:
            raise Conflict(f"model {ref.name!r} has no promoted version: promote one or name a version")
        return self.version(ref.name, model.promoted)

    def load(self, ref: ModelRef | str) -> tuple[ModelVersion, TrainedModel]:
        """The model ``ref`` names, ready to score; cached per process, verified once.

        Refused (:class:`ArtifactRefused`) when the artifact's SHA-256 differs from the one recorded
        at save, or it was written by other major.minor versions of pyod, scikit-learn or numpy.
        """
        meta = self.resolve(ModelRef.parse(ref) if isinstance(ref, str) else ref)
        key = (meta.name, meta.version, meta.checksum)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return meta, cached
        data = self._artifacts.get(meta.name, meta.version)
        if data is None:
            raise NotFound(f"model {meta.ref}: its artifact is missing from the {self._artifacts.kind} model store")
        actual = hashlib.sha256(data).hexdigest()
        if actual != meta.checksum:
            raise ArtifactRefused(
                f"model {meta.ref}: the artifact's sha256 is {actual}, not the {meta.checksum} recorded when it "
                "was saved: it was altered or corrupted, so it is not loaded. Promote another version or train again"
            )
        mismatched = incompatible_libraries(meta.libraries)
        if mismatched:
            raise ArtifactRefused(
                f"model {meta.ref} was saved with {', '.join(mismatched)}; a model is loaded only by the same "
                "major.minor versions of pyod, scikit-learn and numpy: train it again with this version"
            )
        model = TrainedModel.from_artifact(data)
        with self._lock:
            self._cache[key] = model
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return meta, model

    def find_by_job(self, name: str, job_id: str) -> ModelVersion | None:
        """The version a training job already saved (a redelivered detect step saves nothing twice)."""
        if not self.exists(name):
            return None
        return next((v for v in self.versions(name) if v.training_job == job_id), None)

    def check_room(self, name: str) -> None:
        """Refuse a new model name once ``max_models`` models are stored (at submit, before any work)."""
        if not self.exists(name) and self._r.zcard(MODEL_INDEX) >= self._max_models:
            raise Conflict(f"{self._max_models} models are stored already (the limit): delete some first")

    # -- writing ---------------------------------------------------------------------------------
    def save(
        self,
        name: str,
        model: TrainedModel,
        *,
        params: dict[str, object],
        contamination: float,
        rows: int,
        training_job: str | None = None,
        created_by: str | None = None,
    ) -> ModelVersion:
        """Store ``model`` as the next version of ``name``.  The first version is promoted at once; a
        later one only when promoted (a retrained model never changes what ``name`` scores with by
        itself).  Past ``max_versions`` the oldest versions that are not promoted are deleted."""
        validate_model_name(name)
        if training_job is not None:
            done = self.find_by_job(name, training_job)
            if done is not None:
                return done
        data = model.to_artifact()
        if len(data) > self._max_artifact_bytes:
            raise InvalidInput(
                f"the fitted {model.detector} model is {len(data)} bytes, over the {self._max_artifact_bytes}-byte "
                "limit (PYNOMALY_MODEL_MAX_ARTIFACT_BYTES): train on fewer rows or choose a smaller detector"
            )
        self.check_room(name)
        version = int(self._r.incr(_seq_key(name)))
        meta = ModelVersion(
            name=name,
            version=version,
            detector=model.detector,
            params=dict(params),
            contamination=contamination,
            threshold=model.threshold,
            columns=list(model.columns),
            preprocessing=model.preprocessing.as_dict(),
            rows=rows,
            checksum=hashlib.sha256(data).hexdigest(),
            size_bytes=len(data),
            libraries=library_versions(),
            store=self._artifacts.kind,
            training_job=training_job,
            created_by=created_by,
        )
        self._artifacts.put(name, version, data)  # before the metadata: a listed version has its artifact
        try:
            pruned = self._add_version(meta)
        except BaseException:
            self._artifacts.delete(name, version)
            raise
        for old in pruned:
            self._artifacts.delete(name, old)
        return meta

    def _add_version(self, meta: ModelVersion) -> builtins.list[int]:
        key = _model_key(meta.name)
        while True:
            with self._r.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    model = Model.from_dict(json.loads(raw)) if raw is not None else Model(meta.name)
                    model.versions.append(meta.version)
                    model.latest = meta.version
                    if model.promoted is None:
                        model.promoted = meta.version
                    pruned: builtins.list[int] = []
                    while len(model.versions) > self._max_versions:
                        oldest = next(v for v in model.versions if v != model.promoted)
                        model.versions.remove(oldest)
                        pruned.append(oldest)
                    model.updated_at = utcnow()
                    pipe.multi()
                    pipe.incr(SCORING_GENERATION)  # live scorers re-resolve their models
                    pipe.set(_version_key(meta.name, meta.version), json.dumps(meta.as_dict()))
                    pipe.set(key, json.dumps(model.as_dict()))
                    if raw is None:
                        pipe.zadd(MODEL_INDEX, {meta.name: time.time()})
                    for old in pruned:
                        pipe.delete(_version_key(meta.name, old))
                    pipe.execute()
                    return pruned
                except redis.WatchError:
                    continue

    def promote(self, name: str, version: int) -> Model:
        """Make ``version`` the one ``name`` means (rollback: promote an older one)."""
        self.version(name, version)  # 404 for an unknown model or version

        def change(model: Model) -> None:
            if version not in model.versions:
                raise NotFound(f"model {name!r} has no version {version}")
            model.promoted = version

        return self._update(name, change)

    def delete_version(self, name: str, version: int) -> None:
        """Delete one version; the promoted one is refused (promote another first, or delete the model)."""

        def change(model: Model) -> None:
            if version not in model.versions:
                raise NotFound(f"model {name!r} has no version {version}")
            if model.promoted == version:
                raise Conflict(
                    f"version {version} is the promoted version of model {name!r}: promote another version "
                    "first, or delete the whole model"
                )
            model.versions.remove(version)
            model.latest = model.versions[-1] if model.versions else None

        self._update(name, change, also_delete=[_version_key(name, version)])
        self._artifacts.delete(name, version)

    def delete(self, name: str) -> Model:
        """Delete a model with every version and artifact."""

        def with_versions(model: Model, pipe: Any) -> None:
            pipe.incr(SCORING_GENERATION)  # live scorers drop it
            pipe.delete(*(_version_key(name, v) for v in model.versions))
            pipe.zrem(MODEL_INDEX, name)

        key = _model_key(validate_model_name(name))
        model = delete_document(self._r, key, Model.from_dict, lambda: NotFound(f"no model {name!r}"), with_versions)
        for version in model.versions:
            self._artifacts.delete(name, version)
        return model

    def _update(
        self, name: str, change: Callable[[Model], None], also_delete: builtins.list[str] | None = None
    ) -> Model:
        def stage(_: Model, pipe: Any) -> None:
            pipe.incr(SCORING_GENERATION)  # live scorers re-resolve their models
            if also_delete:
                pipe.delete(*also_delete)

        key = _model_key(validate_model_name(name))
        return update_document(self._r, key, Model.from_dict, change, lambda: NotFound(f"no model {name!r}"), stage)


def artifacts_from_setting(
    value: str, blobs: redis.Redis, codec: BlobCodec, admission: MemoryAdmission | None
) -> ArtifactBackend:
    kind, root = parse_model_store(value)
    if kind == "dir" and root is not None:
        return DirectoryArtifacts(root, codec)
    return RedisArtifacts(blobs, codec, admission)
