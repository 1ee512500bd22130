"""Job records, datasets, results and reports in Redis."""

from __future__ import annotations

import builtins
import gzip
import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis

from pynomaly.domain.datasets import Dataset
from pynomaly.domain.errors import Conflict, InsufficientStorage, NotFound
from pynomaly.domain.jobs import Job, JobStatus, check_transition, utcnow
from pynomaly.storage.encryption import PLAIN, BlobCodec
from pynomaly.storage.redis_client import KEY_PREFIX, delete_document, update_document

JOB_INDEX = f"{KEY_PREFIX}jobs"
# Set once every job is in its per-status index (status_index); until then a list builds them first.
STATUS_INDEXED = f"{KEY_PREFIX}jobs:status-indexed"
# Jobs stored (or sent back to queued) whose Celery message is not confirmed sent yet: a process
# that dies, or a Redis that fails, between the two leaves the id here for the sweep to requeue.
UNQUEUED = f"{KEY_PREFIX}jobs:unqueued"
# Blob kinds holding a job's data: as submitted, and after preprocessing.
DATASET = "dataset"
PREPARED = "prepared"
# What preprocessing learned (imputation values, scaling), kept for a save_model job's detect step.
PREPROCESSING_FIT = "preprocessing-fit"
RESULT = "result"
REPORT_KINDS = ("report-json", "report-csv", "report-html")
# job id -> bytes an accepted, unfinished job may still write (its preprocessed copy, result and
# reports); admission control counts them as used, so accepted jobs always have room to finish.
RESERVATIONS = f"{KEY_PREFIX}memory:reservations"
_SUM_RESERVATIONS = """
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
return total
"""


def expected_growth(dataset_bytes: int) -> int:
    """What a job still writes after submit: a preprocessed copy as large as the dataset, the result
    (scores and labels, gzip'd: 15-35% of it, measured) and reports; per-key overhead on top."""
    return dataset_bytes + dataset_bytes // 2 + 16 * 1024


def _refuse_oom(exc: redis.exceptions.OutOfMemoryError) -> InsufficientStorage:
    return InsufficientStorage(f"Redis refused the write (it is at its maxmemory): {exc}")


def _job_key(job_id: str) -> str:
    return f"{KEY_PREFIX}job:{job_id}"


def status_index(status: str) -> str:
    """Ids of the jobs in ``status``, scored by creation time like JOB_INDEX: listing is O(page)."""
    return f"{JOB_INDEX}:status:{status}"


def created_score(created_at: str) -> float:
    return datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()


def index_job(pipe: Any, job_id: str, status: str, score: float) -> None:
    """Queue a job's index entries on ``pipe``: the whole list and its status's."""
    pipe.zadd(JOB_INDEX, {job_id: score})
    pipe.zadd(status_index(status), {job_id: score})


# Drop from an index (KEYS[1]) the ids (ARGV[2..]) whose document is gone (expired, purged) or, for a
# status index (ARGV[1] = its status), whose document has another status.  Atomic, so an entry is
# never dropped while its job moves back into the status.  KEYS[2] is the documents' key prefix.
_PRUNE = """
local removed = 0
for i = 2, #ARGV do
  local raw = redis.call('GET', KEYS[2] .. ARGV[i])
  if not raw or (ARGV[1] ~= '' and cjson.decode(raw)['status'] ~= ARGV[1]) then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
"""


# Move a job (ARGV[1]) from one status index (KEYS[2]) to another (KEYS[3]) with the score it has in
# every index: the one it got in JOB_INDEX (KEYS[1]) at create, or its creation time (ARGV[2]) when
# that entry is gone.  Read and moved inside the caller's MULTI/EXEC: no round trip of its own.
_MOVE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1]) or ARGV[2]
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('ZADD', KEYS[3], score, ARGV[1])
"""


def _blob_key(kind: str, job_id: str) -> str:
    return f"{KEY_PREFIX}{kind}:{job_id}"


def _idempotency_key(key: str) -> str:
    return f"{KEY_PREFIX}idempotency:{key}"


# Compare-and-act on "job_id fingerprint" values, so a late call never touches another job's claim.
_CONFIRM = """
local v = redis.call('GET', KEYS[1])
if v and (v == ARGV[1] or string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ' ') then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
local v = redis.call('GET', KEYS[1])
if v and (v == ARGV[1] or string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ' ') then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _pack(data: Any) -> bytes:
    # Level 1: a 100k-row result compresses in 20 ms instead of 124 ms at level 5, 8% larger (measured).
    return gzip.compress(json.dumps(data, separators=(",", ":")).encode(), compresslevel=1)


def _unpack(raw: bytes) -> Any:
    return json.loads(gzip.decompress(raw))


class JobStore:
    """Jobs as JSON documents, changed only through allowed status transitions.

    Two clients: a text one for job documents and a binary one for gzip'd blobs, which pass through
    ``codec`` (encryption at rest; job documents stay plain so listing needs no key).
    """

    def __init__(
        self,
        client: redis.Redis,
        blobs: redis.Redis,
        ttl_seconds: int,
        codec: BlobCodec = PLAIN,
        data_ttl_seconds: int | None = None,
    ) -> None:
        self._r = client
        self._b = blobs
        self._ttl = ttl_seconds
        self._codec = codec
        # The submitted and preprocessed datasets may go before the job's record and result.
        self._data_ttl = min(data_ttl_seconds or ttl_seconds, ttl_seconds)
        self._prune = client.register_script(_PRUNE)

    # -- jobs ----------------------------------------------------------------------------------
    def create(self, job: Job, dataset: Dataset, also: Callable[[Any], None] | None = None) -> None:
        """Store the dataset first, then the job, so a visible job always has its data.

        ``also`` adds writes to the job's MULTI/EXEC (its events in the outbox): all or nothing.
        The job's expected growth is reserved with it (released when it finishes): see RESERVATIONS.
        A Redis at its maxmemory refuses the dataset before any job exists.
        """
        key = _blob_key(DATASET, job.id)
        raw = dataset.to_bytes()
        try:
            self._b.set(key, self._codec.seal(key, raw), ex=self._data_ttl)
            pipe = self._r.pipeline(transaction=True)
            pipe.set(_job_key(job.id), json.dumps(job.as_dict()), ex=self._ttl)
            index_job(pipe, job.id, job.status, time.time())
            pipe.zadd(UNQUEUED, {job.id: time.time()})
            pipe.hset(RESERVATIONS, job.id, expected_growth(len(raw)))
            if also is not None:
                also(pipe)
            pipe.execute()
        except redis.exceptions.OutOfMemoryError as exc:
            self._b.delete(key)  # DEL is allowed at maxmemory
            raise _refuse_oom(exc) from exc

    # -- memory reservations ---------------------------------------------------------------------
    def reserved_bytes(self) -> int:
        return int(self._r.eval(_SUM_RESERVATIONS, 1, RESERVATIONS))

    def release(self, job_id: str) -> None:
        """The job finished: it writes nothing more (its preprocessed copy is dropped too)."""
        self._r.hdel(RESERVATIONS, job_id)
        self._drop_scratch(job_id)

    def _drop_scratch(self, job_id: str) -> None:
        self._b.delete(_blob_key(PREPARED, job_id), _blob_key(PREPROCESSING_FIT, job_id))

    def forget_stale_reservations(self) -> int:
        """Drop reservations of jobs that finished or expired (a release that never ran); maintenance."""
        ids = self._r.hkeys(RESERVATIONS)
        stale: list[str] = []
        for start in range(0, len(ids), 200):
            chunk = ids[start : start + 200]
            for job_id, raw in zip(chunk, self._r.mget([_job_key(i) for i in chunk]), strict=True):
                if raw is None or JobStatus(json.loads(raw)["status"]).terminal:
                    stale.append(job_id)
        if stale:
            self._r.hdel(RESERVATIONS, *stale)
        return len(stale)

    def purge(self, job_id: str) -> Job:
        """Delete a finished job with everything kept for it: record, index entry, datasets, result,
        reports, reservation and its Idempotency-Key.  A queued or running job is a 409 (cancel it first)."""

        def running(job: Job) -> None:
            if not job.state.terminal:
                raise Conflict(f"job {job_id} is {job.status}: cancel it and wait until it stops, then delete")

        def with_everything_kept(job: Job, pipe: Any) -> None:
            kinds = (DATASET, PREPARED, PREPROCESSING_FIT, RESULT, *REPORT_KINDS)
            pipe.delete(*(_blob_key(k, job_id) for k in kinds))
            pipe.zrem(JOB_INDEX, job_id)
            pipe.zrem(status_index(job.status), job_id)
            pipe.zrem(UNQUEUED, job_id)
            pipe.hdel(RESERVATIONS, job_id)

        job = delete_document(
            self._r,
            _job_key(job_id),
            Job.from_dict,
            lambda: NotFound(f"no job {job_id!r}"),
            with_everything_kept,
            running,
        )
        if job.idempotency_key:
            self.release_idempotency_key(job.idempotency_key, job_id)
        return job

    def mark_unqueued(self, job_id: str) -> None:
        """The job is about to be (re)enqueued outside :meth:`create` (a retry, a replay)."""
        self._r.zadd(UNQUEUED, {job_id: time.time()})

    def mark_enqueued(self, job_id: str) -> None:
        self._r.zrem(UNQUEUED, job_id)

    def unqueued_since(self, seconds: float) -> list[str]:
        """Ids marked unqueued for at least ``seconds`` (their enqueue never confirmed)."""
        return list(self._r.zrangebyscore(UNQUEUED, "-inf", time.time() - seconds))

    def claim_idempotency_key(
        self, key: str, job_id: str, fingerprint: str, pending_seconds: int
    ) -> tuple[str, str | None] | None:
        """Atomically reserve ``key`` for ``job_id`` (SET NX): None when this call won it, else the
        holder's (job id, request fingerprint; None for a claim stored without one).

        The claim lives ``pending_seconds`` until :meth:`confirm_idempotency_key`: a process that dies
        between claim and create does not block the key for the whole result TTL.
        """
        name = _idempotency_key(key)
        if self._r.set(name, f"{job_id} {fingerprint}", nx=True, ex=pending_seconds):
            return None
        raw = self._r.get(name)
        if raw is None:  # expired (or released) between the two calls: claim it again
            return self.claim_idempotency_key(key, job_id, fingerprint, pending_seconds)
        holder, _, held_fingerprint = raw.partition(" ")
        return holder, held_fingerprint or None

    def confirm_idempotency_key(self, key: str, job_id: str) -> None:
        """The job exists: keep the key as long as the job (only if it still names this job)."""
        self._r.eval(_CONFIRM, 1, _idempotency_key(key), job_id, self._ttl)

    def release_idempotency_key(self, key: str, job_id: str) -> None:
        self._r.eval(_RELEASE, 1, _idempotency_key(key), job_id)

    def get(self, job_id: str) -> Job:
        raw = self._r.get(_job_key(job_id))
        if raw is None:
            raise NotFound(f"no job {job_id!r}")
        return Job.from_dict(json.loads(raw))

    def exists(self, job_id: str) -> bool:
        return bool(self._r.exists(_job_key(job_id)))

    def update(
        self, job_id: str, change: Callable[[Job], object], also: Callable[[Job, Any], object] | None = None
    ) -> Job:
        """``also(job, pipe)`` adds writes to the update's MULTI/EXEC (its event in the outbox); the
        job's status index moves in the same MULTI/EXEC."""
        before: dict[str, Any] = {}

        def tracked(job: Job) -> object:
            before["status"] = job.status
            return change(job)

        def stage(job: Job, pipe: Any) -> None:  # index move and the caller's writes: one MULTI
            if job.status != before["status"]:
                # EVAL, not EVALSHA: a pipeline with a Script object asks SCRIPT EXISTS first (a round trip).
                keys = (JOB_INDEX, status_index(before["status"]), status_index(job.status))
                pipe.eval(_MOVE, 3, *keys, job_id, created_score(job.created_at))
            if also is not None:
                also(job, pipe)

        return update_document(
            self._r, _job_key(job_id), Job.from_dict, tracked, lambda: NotFound(f"no job {job_id!r}"), stage
        )

    def transition(
        self, job_id: str, target: JobStatus, also: Callable[[Job, Any], object] | None = None, **fields: Any
    ) -> Job:
        def change(job: Job) -> None:
            check_transition(job.state, target)
            job.status = target.value
            for name, value in fields.items():
                setattr(job, name, value)
            if target is JobStatus.RUNNING and job.started_at is None:
                job.started_at = utcnow()
            if target.terminal:
                job.finished_at = utcnow()

        def staged(job: Job, pipe: Any) -> None:
            if target.terminal:  # the reservation goes with the terminal state: one MULTI, one round trip
                pipe.hdel(RESERVATIONS, job_id)
            if also is not None:
                also(job, pipe)

        job = self.update(job_id, change, staged)
        if target.terminal:
            self._drop_scratch(job_id)
        elif target is JobStatus.QUEUED:  # run again (retry, replay): it will write its outputs again
            size = int(self._b.strlen(_blob_key(DATASET, job_id)))
            self._r.hset(RESERVATIONS, job_id, expected_growth(size))
        return job

    def request_cancel(self, job_id: str) -> Job:
        """Queued jobs are cancelled at once; running ones stop at their next checkpoint."""

        def change(job: Job) -> None:
            if job.state.terminal:
                raise Conflict(f"job is already {job.status}")
            job.cancel_requested = True
            if job.state in (JobStatus.QUEUED, JobStatus.RETRYING):
                job.status = JobStatus.CANCELLED.value
                job.message = "cancelled before it started"
                job.finished_at = utcnow()

        job = self.update(job_id, change)
        if job.state.terminal:
            self.release(job_id)
        return job

    def list(
        self,
        status: str | None = None,
        detector: str | None = None,
        offset: int = 0,
        limit: int = 50,
        schedule_id: str | None = None,
    ) -> tuple[list[Job], int]:
        """Newest first, filtered; returns one page and the total number of matches.

        Without a detector or schedule filter it reads one page of an index (O(page)); those two
        filters, and a Redis at its maxmemory before the indexes were built, scan every job.
        """
        if detector is None and schedule_id is None and self._ensure_status_indexes():
            return self._page(status, offset, limit)
        ids = self._r.zrevrange(JOB_INDEX, 0, -1)
        matches: list[Job] = []
        total = 0
        stale: list[str] = []
        for start in range(0, len(ids), 200):
            chunk = ids[start : start + 200]
            for job_id, raw in zip(chunk, self._r.mget([_job_key(i) for i in chunk]), strict=True):
                if raw is None:
                    stale.append(job_id)
                    continue
                data = json.loads(raw)
                if (status and data["status"] != status) or (detector and data["detector"] != detector):
                    continue
                if schedule_id and data.get("schedule_id") != schedule_id:
                    continue
                if offset <= total < offset + limit:
                    matches.append(Job.from_dict(data))
                total += 1
        if stale:  # expired by TTL: keep the index in step
            self._r.zrem(JOB_INDEX, *stale)
        return matches, total

    def _page(self, status: str | None, offset: int, limit: int) -> tuple[builtins.list[Job], int]:
        key = status_index(status) if status else JOB_INDEX
        # Documents keep the TTL they got at creation: entries older than it are gone for sure.  The
        # unfiltered list (maintenance calls it) prunes every index, the others their own.
        pipe = self._r.pipeline(transaction=False)
        for name in [key] if status else [JOB_INDEX, *(status_index(s.value) for s in JobStatus)]:
            pipe.zremrangebyscore(name, "-inf", time.time() - self._ttl)
        pipe.execute()
        while True:
            pipe = self._r.pipeline(transaction=False)
            pipe.zrevrange(key, offset, offset + limit - 1)
            pipe.zcard(key)
            ids, total = pipe.execute() if limit > 0 else ([], int(self._r.zcard(key)))
            raws = self._r.mget([_job_key(i) for i in ids]) if ids else []
            docs = [json.loads(raw) for raw in raws if raw is not None]
            if len(docs) == len(ids) and all(status is None or d["status"] == status for d in docs):
                return [Job.from_dict(d) for d in docs], int(total)
            # An expired or moved entry (a job indexed before a crash, or before the indexes existed).
            if not self._prune(keys=[key, _job_key("")], args=[status or "", *ids]):
                return [Job.from_dict(d) for d in docs if status is None or d["status"] == status], int(total)

    def _ensure_status_indexes(self) -> bool:
        """Index every job by status once (jobs stored before the indexes existed); idempotent.

        False when Redis, at its maxmemory, refuses to build them: reading must still work there."""
        if self._r.exists(STATUS_INDEXED):
            return True
        ids = self._r.zrange(JOB_INDEX, 0, -1, withscores=True)
        try:
            for start in range(0, len(ids), 1000):
                chunk = ids[start : start + 1000]
                pipe = self._r.pipeline(transaction=False)
                for (job_id, score), raw in zip(chunk, self._r.mget([_job_key(i) for i, _ in chunk]), strict=True):
                    if raw is not None:
                        pipe.zadd(status_index(json.loads(raw)["status"]), {job_id: score})
                pipe.execute()
            self._r.set(STATUS_INDEXED, "1")
        except redis.exceptions.OutOfMemoryError:
            return False
        return True

    def counts_by_status(self) -> dict[str, int]:
        """Jobs per status from the indexes' sizes (no document is read)."""
        if not self._ensure_status_indexes():
            counts = {s.value: 0 for s in JobStatus}
            for job in self.list(limit=10**9)[0]:
                counts[job.status] += 1
            return counts
        cutoff = time.time() - self._ttl
        pipe = self._r.pipeline(transaction=False)
        for s in JobStatus:
            pipe.zremrangebyscore(status_index(s.value), "-inf", cutoff)
            pipe.zcard(status_index(s.value))
        sizes = pipe.execute()[1::2]
        return {s.value: int(n) for s, n in zip(JobStatus, sizes, strict=True)}

    # -- blobs ---------------------------------------------------------------------------------
    def put_blob(self, kind: str, job_id: str, data: Any) -> str:
        key = _blob_key(kind, job_id)
        self._b.set(key, self._codec.seal(key, _pack(data)), ex=self._ttl)
        return key

    def get_blob(self, kind: str, job_id: str) -> Any:
        key = _blob_key(kind, job_id)
        raw = self._b.get(key)
        if raw is None:
            raise NotFound(f"no {kind} for job {job_id!r}")
        return _unpack(self._codec.open(key, raw))

    def put_dataset(self, kind: str, job_id: str, dataset: Dataset) -> str:
        """A job's submitted or preprocessed dataset, kept ``data_ttl_seconds`` (never past the job)."""
        key = _blob_key(kind, job_id)
        self._b.set(key, self._codec.seal(key, dataset.to_bytes()), ex=self._data_ttl)
        return key

    def get_dataset(self, kind: str, job_id: str) -> Dataset:
        key = _blob_key(kind, job_id)
        raw = self._b.get(key)
        if raw is None:
            raise NotFound(f"no {kind} for job {job_id!r}")
        return Dataset.from_bytes(self._codec.open(key, raw))

    def has_blob(self, kind: str, job_id: str) -> bool:
        return bool(self._b.exists(_blob_key(kind, job_id)))
