"""Hostile inputs against the running system: every endpoint and the CLI.

Each HTTP case sends one bad request to the real API (uvicorn, Redis, Kafka, workers) and asserts a
4xx ``application/problem+json`` answer whose ``detail`` says what was wrong, and that nothing was
stored or enqueued: the job, dataset and schedule indexes, job records, idempotency claims, beat
entries, dead letters and every job queue are the same before and after.  Each CLI case asserts a
non-zero exit with one ``Error:`` line saying what was wrong, no traceback, and the same.

(The cases test_api.py and test_schedules.py already hold — NaN/Infinity tokens, webhook SSRF
targets, idempotency races, upload size, row and column limits — are not repeated here.)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from click.testing import CliRunner

from pynomaly.api import API_KEY_HEADER
from pynomaly.cli import main
from pynomaly.messaging.beat import BEAT_KEY_PREFIX
from pynomaly.storage.datasets import DATASET_INDEX
from pynomaly.storage.dead_letters import DLQ_INDEX
from pynomaly.storage.jobs import JOB_INDEX
from pynomaly.storage.schedules import SCHEDULE_INDEX
from pynomaly.topology import TOPOLOGY
from tests.e2e.support import queue_lengths, small_rows, wait_for

pytestmark = pytest.mark.e2e

PROBLEM = "application/problem+json"
JOB_QUEUES = {t.queue for t in TOPOLOGY.tasks if t.queue != "default"}  # default also carries maintenance
JSON = {"Content-Type": "application/json"}
ROWS = small_rows(20)


@dataclass(frozen=True)
class Known:
    """Things that exist, so bad input can aim at them: a completed job, a dataset, a paused schedule."""

    job_id: str
    dataset_id: str
    schedule_id: str


@dataclass(frozen=True)
class Case:
    name: str
    send: Callable[[httpx.Client, Known], httpx.Response]
    status: int
    detail: str  # a regular expression the problem's detail must match


def _count(client: redis.Redis, pattern: str) -> int:
    return sum(1 for _ in client.scan_iter(match=pattern, count=1000))


def snapshot(client: redis.Redis) -> dict[str, object]:
    """Everything a request could store or enqueue."""
    return {
        "jobs": set(client.zrange(JOB_INDEX, 0, -1)),
        "job records": _count(client, "pynomaly:job:*"),
        "idempotency claims": _count(client, "pynomaly:idempotency:*"),
        "datasets": set(client.zrange(DATASET_INDEX, 0, -1)),
        "schedules": set(client.zrange(SCHEDULE_INDEX, 0, -1)),
        "beat entries": client.zcard(BEAT_KEY_PREFIX + ":schedule"),
        "dead letters": client.zcard(DLQ_INDEX),
        "queues": {k: v for k, v in queue_lengths(client).items() if k.split(":")[0] in JOB_QUEUES},
    }


def _idle(client: redis.Redis) -> dict[str, object]:
    """A snapshot once no job message waits (earlier tests' chains may still be moving)."""

    def idle() -> dict[str, object] | None:
        state = snapshot(client)
        queues: dict[str, int] = state["queues"]  # type: ignore[assignment]
        return None if any(queues.values()) else state

    return wait_for(idle, 120, what="idle job queues")


# -- the requests ------------------------------------------------------------------------------------
def _json(path: str, text: str | bytes) -> Callable[[httpx.Client, Known], httpx.Response]:
    body = text.encode() if isinstance(text, str) else text
    return lambda http, _: http.post(path, content=body, headers=JSON)


def _job(**fields: Any) -> Callable[[httpx.Client, Known], httpx.Response]:
    return lambda http, _: http.post("/v1/jobs", json={"rows": ROWS, "detector": "ecod", **fields})


def _csv(data: bytes, **form: str) -> Callable[[httpx.Client, Known], httpx.Response]:
    form = {"detector": "ecod", **form}
    return lambda http, _: http.post("/v1/jobs", files={"file": ("d.csv", data, "text/csv")}, data=form)


def _get(path: str, **params: Any) -> Callable[[httpx.Client, Known], httpx.Response]:
    return lambda http, known: http.get(path.format(**vars(known)), params=params)


def _schedule(**fields: Any) -> Callable[[httpx.Client, Known], httpx.Response]:
    def send(http: httpx.Client, known: Known) -> httpx.Response:
        body = {"interval_seconds": 3600, "dataset_id": known.dataset_id, "detector": "ecod", **fields}
        return http.post("/v1/schedules", json={k: v for k, v in body.items() if v is not None})

    return send


def _dataset_csv(data: bytes, **params: str) -> Callable[[httpx.Client, Known], httpx.Response]:
    return lambda http, _: http.post("/v1/datasets", content=data, params=params, headers={"Content-Type": "text/csv"})


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


OK_CSV = b"a,b\n1,2\n3,4\n5,6\n"
INVALID_JSON = r"Invalid JSON"
CASES = [
    # POST /v1/jobs, JSON body: structure, numbers and types.
    Case(
        "deeply nested rows",
        _json("/v1/jobs", f'{{"detector": "ecod", "rows": {_nested(5000)}}}'),
        422,
        r"recursion limit exceeded",
    ),
    Case(
        "deeply nested params",
        _json(
            "/v1/jobs", '{"detector": "ecod", "rows": [[1], [2]], "params": ' + '{"a": ' * 3000 + "1" + "}" * 3000 + "}"
        ),
        422,
        r"recursion limit exceeded",
    ),
    Case(
        "400-digit integer cell",
        _json("/v1/jobs", '{"detector": "ecod", "rows": [[1, 2], [3, ' + "9" * 400 + "]]}"),
        422,
        r"row 1, column 'x1': the number is too large",
    ),
    Case(
        "5000-digit integer cell",
        _json("/v1/jobs", '{"detector": "ecod", "rows": [[1, ' + "9" * 5000 + "]]}"),
        422,
        r"number out of range",
    ),
    Case("empty rows", _job(rows=[]), 422, r"dataset has no data rows"),
    Case("ragged rows", _job(rows=[[1, 2], [3]]), 422, r"row 1: expected a list of 2 numbers"),
    Case("duplicate columns", _job(columns=["a", "a"]), 422, r"duplicate column names: \['a'\]"),
    Case(
        "escape sequence in a column name",
        _job(columns=["a\x1b[31m", "b"]),
        422,
        r"column name .* contains the control character U\+001B",
    ),
    Case("NUL in an object key", _job(rows=[{"a\x00": 1.0}] * 20), 422, r"control character U\+0000"),
    Case("boolean cells", _job(rows=[[True, False]] * 20), 422, r"row 0, column 'x0': booleans are not numbers"),
    Case("object cell", _job(rows=[[{"a": 1}, 2]] * 20), 422, r"row 0, column 'x0': dict is not a number"),
    Case(
        "objects with other keys",
        _job(rows=[{"a": 1}, {"b": 2}]),
        422,
        r"row 1: every object must have exactly the keys \['a'\]",
    ),
    Case("detector of the wrong type", _job(detector=123), 422, r"detector: Input should be a valid string"),
    Case("contamination as text", _job(contamination="abc"), 422, r"contamination: Input should be a valid number"),
    Case("contamination zero", _job(contamination=0), 422, r"contamination must be > 0 and <= 0.5, got 0"),
    Case("threshold 'NaN'", _job(threshold="NaN"), 422, r"threshold must be a finite number, got nan"),
    Case("steps as a string", _job(steps="detect"), 422, r"steps: Input should be a valid array"),
    Case("params as a list", _job(params=[1]), 422, r"params: Input should be an object"),
    Case(
        "huge detector parameter",
        _job(detector="knn", params={"n_neighbors": 10**12}),
        422,
        r"parameter 'n_neighbors' must be <= 1000",
    ),
    Case(
        "fractional integer parameter",
        _job(detector="knn", params={"n_neighbors": 2.5}),
        422,
        r"parameter 'n_neighbors' must be an integer",
    ),
    Case(
        "unknown preprocessing option",
        _job(preprocessing={"colour": "red"}),
        422,
        r"unknown preprocessing option\(s\) \['colour'\]",
    ),
    Case(
        "eleven notification targets",
        _job(notify=[{"channel": "email", "target": f"a{i}@example.com"} for i in range(11)]),
        422,
        r"at most 10 notification targets",
    ),
    Case(
        "header injection in an e-mail target",
        _job(notify=[{"channel": "email", "target": "a@example.com\r\nBcc: x@evil.test"}]),
        422,
        r"notify\[0\]\.target must be an e-mail address",
    ),
    Case(
        "Idempotency-Key of 129 characters",
        lambda http, _: http.post(
            "/v1/jobs", json={"rows": ROWS, "detector": "ecod"}, headers={"Idempotency-Key": "k" * 129}
        ),
        422,
        r"Idempotency-Key must be 1 to 128 characters",
    ),
    Case(
        "empty Idempotency-Key",
        lambda http, _: http.post("/v1/jobs", json={"rows": ROWS, "detector": "ecod"}, headers={"Idempotency-Key": ""}),
        422,
        r"Idempotency-Key must be 1 to 128 characters",
    ),
    # POST /v1/jobs: content types and malformed bodies.
    Case(
        "text/plain body",
        lambda http, _: http.post("/v1/jobs", content=OK_CSV, headers={"Content-Type": "text/plain"}),
        415,
        r"send application/json \(rows\) or multipart/form-data",
    ),
    Case(
        "no content type",
        lambda http, _: http.post("/v1/jobs", content=b'{"detector": "ecod"}'),
        415,
        r"send application/json",
    ),
    Case("trailing comma", _json("/v1/jobs", '{"detector": "ecod", "rows": [[1]],}'), 422, r"trailing comma"),
    Case("empty JSON body", _json("/v1/jobs", b""), 422, r"EOF while parsing"),
    Case("JSON array body", _json("/v1/jobs", "[1, 2]"), 422, r"body: Input should be an object"),
    Case(
        "UTF-16 JSON", _json("/v1/jobs", '{"detector": "ecod", "rows": [[1], [2]]}'.encode("utf-16")), 422, INVALID_JSON
    ),
    Case("binary body as JSON", _json("/v1/jobs", bytes(range(256))), 422, INVALID_JSON),
    Case(
        "JSON over four times the upload limit",
        lambda http, _: http.post("/v1/jobs", content=b"{" + b" " * (4 * 1024 * 1024) + b"}", headers=JSON),
        422,
        r"request body is \d+ bytes; the limit is 4194304",
    ),
    # POST /v1/jobs, multipart: the form and the CSV.
    Case(
        "multipart without a file part",
        lambda http, _: http.post("/v1/jobs", files={"x": ("d.csv", OK_CSV, "text/csv")}, data={"detector": "ecod"}),
        422,
        r"multipart body needs a 'file' part",
    ),
    Case(
        "file sent as a text field",
        lambda http, _: http.post(
            "/v1/jobs", data={"file": "a\n1\n2\n", "detector": "ecod"}, files={"other": ("o", b"", "text/plain")}
        ),
        422,
        r"multipart body needs a 'file' part",
    ),
    Case("unknown form field", _csv(OK_CSV, colour="red"), 422, r"unknown form field\(s\) \['colour'\]"),
    Case("params not JSON", _csv(OK_CSV, params="{oops"), 422, r"params must be a JSON object"),
    Case("notify a JSON object", _csv(OK_CSV, notify='{"channel": "email"}'), 422, r"notify must be a JSON array"),
    Case("contamination 'abc' in a form", _csv(OK_CSV, contamination="abc"), 422, r"contamination must be a number"),
    Case("threshold 'inf' in a form", _csv(OK_CSV, threshold="inf"), 422, r"threshold must be a finite number"),
    Case(
        "multipart without a boundary",
        lambda http, _: http.post("/v1/jobs", content=b"garbage", headers={"Content-Type": "multipart/form-data"}),
        400,
        r"Missing boundary in multipart",
    ),
    Case(
        "CSV with a BOM and a bad cell", _csv(b"\xef\xbb\xbfa,b\n1,2\nx,4\n"), 422, r"column 'a': 'x' is not a number"
    ),
    Case("CSV header without a name", _csv(b"a,\n1,2\n3,4\n"), 422, r"every column needs a name in the header row"),
    Case("CSV header only", _csv(b"a,b\n"), 422, r"dataset has no data rows"),
    Case("empty CSV", _csv(b""), 422, r"dataset is empty"),
    Case("PNG as CSV", _csv(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), 422, r"dataset is not UTF-8 text"),
    Case("Latin-1 CSV", _csv("caf\xe9,b\n1,2\n".encode("latin-1")), 422, r"dataset is not UTF-8 text"),
    Case("NUL in a CSV cell", _csv(b"a,b\n1,\x002\n"), 422, r"column 'b': '\\x002' is not a number"),
    Case("unterminated CSV quote", _csv(b'a,b\n"1,2\n3,4\n'), 422, r"has 1 cells; the header has 2"),
    Case("CSV field over 128 KiB", _csv(b"a\n" + b"1" * 200_000 + b"\n"), 422, r"field larger than field limit"),
    # GET /v1/jobs: pagination and filters.
    Case("negative limit", _get("/v1/jobs", limit=-1), 422, r"limit: Input should be greater than or equal to 1"),
    Case("huge limit", _get("/v1/jobs", limit=10**20), 422, r"limit: Input should be less than or equal to 500"),
    Case("negative offset", _get("/v1/jobs", offset=-1), 422, r"offset: Input should be greater than or equal to 0"),
    Case(
        "offset past Redis' range",
        _get("/v1/jobs", offset=10**30),
        422,
        r"offset: Input should be less than or equal to 1000000000",
    ),
    Case("limit not a number", _get("/v1/jobs", limit="abc"), 422, r"limit: Input should be a valid integer"),
    Case("unknown status filter", _get("/v1/jobs", status="bogus"), 422, r"status: Input should be 'queued'"),
    Case(
        "schedule filter of 65 characters",
        _get("/v1/jobs", schedule_id="x" * 65),
        422,
        r"schedule_id: String should have at most 64 characters",
    ),
    # Ids in paths: key suffixes, globs, control characters, traversal.
    Case("job id reaching a result key", _get("/v1/jobs/{job_id}:result"), 404, r"no job '[0-9a-f]{32}:result'"),
    Case("result of a dataset key", _get("/v1/jobs/{job_id}:dataset/result"), 404, r"no job '[0-9a-f]{32}:dataset'"),
    Case("job id as a glob", _get("/v1/jobs/*"), 404, r"no job '\*'"),
    Case("CRLF in a job id", _get("/v1/jobs/a%0d%0aSet-Cookie:x"), 404, r"no job 'a\\r\\nSet-Cookie:x'"),
    Case("invalid UTF-8 in a job id", _get("/v1/jobs/%ff%fe"), 404, r"no job "),
    Case("dot-dot job id", _get("/v1/jobs/%2e%2e"), 404, r"no job '\.\.'"),
    Case("path traversal in a job id", _get("/v1/jobs/..%2F..%2Fetc%2Fpasswd"), 404, r"Not Found"),
    Case("job id of 10,000 characters", _get("/v1/jobs/" + "a" * 10_000), 404, r"no job 'a{10}"),
    Case(
        "report format traversal",
        _get("/v1/jobs/{job_id}/report", format="../../etc/passwd"),
        422,
        r"format: String should match pattern",
    ),
    Case("notifications of an unknown job", _get("/v1/jobs/no-such-job/notifications"), 404, r"no job 'no-such-job'"),
    Case(
        "retry of a result key",
        lambda http, known: http.post(f"/v1/jobs/{known.job_id}:result/retry"),
        404,
        r"no job '[0-9a-f]{32}:result'",
    ),
    Case("cancel of a glob", lambda http, _: http.delete("/v1/jobs/*"), 404, r"no job '\*'"),
    # /v1/datasets
    Case("dataset with duplicate columns", _dataset_csv(b"a,a\n1,2\n"), 422, r"duplicate column names"),
    Case("binary dataset", _dataset_csv(bytes(range(256))), 422, r"dataset is not UTF-8 text"),
    Case(
        "dataset name of 101 characters",
        _dataset_csv(OK_CSV, name="n" * 101),
        422,
        r"name: String should have at most 100 characters",
    ),
    Case(
        "terminal escape in a dataset name",
        _dataset_csv(OK_CSV, name="a\x1b[2J"),
        422,
        r"name must be printable text: it contains the control character U\+001B",
    ),
    Case(
        "dataset JSON with an unknown field",
        lambda http, _: http.post("/v1/datasets", json={"rows": ROWS, "colour": 1}),
        422,
        r"colour: Extra inputs are not permitted",
    ),
    Case(
        "deeply nested dataset", _json("/v1/datasets", f'{{"rows": {_nested(5000)}}}'), 422, r"recursion limit exceeded"
    ),
    Case(
        "multipart dataset name of 101 characters",
        lambda http, _: http.post(
            "/v1/datasets", files={"file": ("d.csv", OK_CSV, "text/csv")}, data={"name": "n" * 101}
        ),
        422,
        r"name must be a string of at most 100 characters",
    ),
    Case(
        "dataset without a content type",
        lambda http, _: http.post("/v1/datasets", content=OK_CSV),
        415,
        r"send text/csv, multipart/form-data",
    ),
    Case("dataset id reaching a data key", _get("/v1/datasets/{dataset_id}:data"), 404, r"no dataset 'ds_\w+:data'"),
    Case(
        "delete of an unknown dataset",
        lambda http, _: http.delete("/v1/datasets/ds_nope"),
        404,
        r"no dataset 'ds_nope'",
    ),
    # /v1/schedules
    Case(
        "interval of 2**63 seconds", _schedule(interval_seconds=2**63), 422, r"interval_seconds must be at most a year"
    ),
    Case(
        "fractional interval",
        _schedule(interval_seconds=1.5),
        422,
        r"interval_seconds: Input should be a valid integer",
    ),
    Case(
        "cron step beyond its field",
        _schedule(interval_seconds=None, cron="*/99999999999999999999 * * * *"),
        422,
        r"minute '\*/9+' has an invalid step",
    ),
    Case(
        "cron with Arabic-Indic digits",
        _schedule(interval_seconds=None, cron="\u0663 * * * *"),
        422,
        r"minute '\u0663' is not a number",
    ),
    Case(
        "cron of 20,000 characters",
        _schedule(interval_seconds=None, cron=",".join(["1"] * 10_000) + " * * * *"),
        422,
        r"cron is 20007 characters long; the limit is 256",
    ),
    Case(
        "cron that never fires",
        _schedule(interval_seconds=None, cron="0 0 30 2 *"),
        422,
        r"day_of_month '30' never occurs in month_of_year '2'",
    ),
    Case("bidi override in a schedule name", _schedule(name="invoice\u202etxt.exe"), 422, r"control character U\+202E"),
    Case("dataset id with traversal", _schedule(dataset_id="../../x"), 422, r"dataset '\.\./\.\./x' does not exist"),
    Case("NUL in a detector name", _schedule(detector="ecod\x00"), 422, r"unknown detector 'ecod\\x00'"),
    Case(
        "private address as a decimal number",
        _schedule(dataset_id=None, dataset_url="http://167772161/x.csv"),
        422,
        r"host '167772161' resolves to 10\.0\.0\.1",
    ),
    Case(
        "private address in octal",
        _schedule(dataset_id=None, dataset_url="http://012.0.0.1/x.csv"),
        422,
        r"host '012\.0\.0\.1' resolves to 10\.0\.0\.1",
    ),
    Case(
        "file URL", _schedule(dataset_id=None, dataset_url="file:///etc/passwd"), 422, r"scheme 'file' is not allowed"
    ),
    Case(
        "credentials in a dataset URL",
        _schedule(dataset_id=None, dataset_url="http://u:p@example.com/x.csv"),
        422,
        r"dataset_url must not carry credentials",
    ),
    Case(
        "port out of range",
        _schedule(dataset_id=None, dataset_url="http://example.com:99999/x.csv"),
        422,
        r"dataset_url has an invalid port",
    ),
    Case("schedule body not JSON", _json("/v1/schedules", "{"), 422, r"body: invalid JSON at character 1"),
    Case(
        "schedule as text/plain",
        lambda http, _: http.post("/v1/schedules", content=b"{}", headers={"Content-Type": "text/plain"}),
        415,
        r"send the schedule as application/json",
    ),
    Case(
        "101 runs of a schedule",
        _get("/v1/schedules/{schedule_id}", runs=101),
        422,
        r"runs: Input should be less than or equal to 100",
    ),
    Case(
        "run of an unknown schedule",
        lambda http, _: http.post("/v1/schedules/sch_nope/run"),
        404,
        r"no schedule 'sch_nope'",
    ),
    Case(
        "pause of a schedule key suffix",
        lambda http, known: http.post(f"/v1/schedules/{known.schedule_id}:runs/pause"),
        404,
        r"no schedule 'sch_\w+:runs'",
    ),
    # Dead letters, audit, headers, methods.
    Case("dead letter path traversal", _get("/v1/dlq/..%2F..%2Fx"), 404, r"Not Found"),
    Case(
        "replay of an unknown dead letter",
        lambda http, _: http.post("/v1/dlq/nope/replay"),
        404,
        r"no dead letter 'nope'",
    ),
    Case(
        "audit action of 65 characters",
        _get("/v1/audit", action="a" * 65),
        422,
        r"action: String should have at most 64 characters",
    ),
    Case("audit limit 501", _get("/v1/audit", limit=501), 422, r"limit: Input should be less than or equal to 500"),
    Case(
        "non-ASCII API key",
        lambda http, _: http.get("/v1/jobs", headers={API_KEY_HEADER: "k\xe9y".encode("latin-1")}),
        401,
        r"a valid API key is required",
    ),
    Case(
        "API key of 60,000 characters",
        lambda http, _: http.get("/v1/jobs", headers={API_KEY_HEADER: "k" * 60_000}),
        401,
        r"a valid API key is required",
    ),
    Case("PATCH on the jobs collection", lambda http, _: http.patch("/v1/jobs"), 405, r"Method Not Allowed"),
]


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def http(local_system) -> Iterator[httpx.Client]:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=local_system.api_url, headers={API_KEY_HEADER: local_system.api_key}, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def known(http: httpx.Client) -> Iterator[Known]:
    job = http.post("/v1/jobs", json={"rows": ROWS, "detector": "ecod", "steps": ["preprocess", "detect", "report"]})
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    dataset = http.post(
        "/v1/datasets", content=OK_CSV, params={"name": "hostile"}, headers={"Content-Type": "text/csv"}
    )
    assert dataset.status_code == 201, dataset.text
    schedule = http.post(
        "/v1/schedules",
        json={"interval_seconds": 3600, "dataset_id": dataset.json()["id"], "detector": "ecod", "paused": True},
    )
    assert schedule.status_code == 201, schedule.text
    # Finished, so its chain enqueues nothing more while the cases compare queue lengths.
    wait_for(lambda: http.get(f"/v1/jobs/{job_id}").json()["status"] == "completed", 120, what="the known job")
    yield Known(job_id, dataset.json()["id"], schedule.json()["id"])
    assert http.delete(f"/v1/schedules/{schedule.json()['id']}").status_code == 204
    assert http.delete(f"/v1/datasets/{dataset.json()['id']}").status_code == 204


def assert_problem(response: httpx.Response, status: int, detail: str) -> None:
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith(PROBLEM), response.headers["content-type"]
    body = response.json()
    assert body["status"] == status and body["title"], body
    assert re.search(detail, body["detail"]), (detail, body["detail"])


# -- the tests -----------------------------------------------------------------------------------------
def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_is_refused_and_leaves_no_trace(
    case: Case, http: httpx.Client, known: Known, system_redis: redis.Redis
) -> None:
    before = _idle(system_redis)
    response = case.send(http, known)
    assert_problem(response, case.status, case.detail)
    if case.status == 405:
        assert response.headers.get("allow"), "a 405 names the methods the path takes"
    assert snapshot(system_redis) == before, f"{case.name}: a refused request stored or enqueued something"


# -- the CLI -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CliCase:
    name: str
    args: Callable[[Path, Known], list[str]]
    error: str  # a regular expression the one Error: line must match


def _files(tmp: Path) -> dict[str, Path]:
    data = {
        "ragged": b"a,b\n1,2\n3\n",
        "empty": b"",
        "binary": b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
        "duplicate": b"\xef\xbb\xbfa,a\n1,2\n3,4\n",
        "ok": OK_CSV,
    }
    paths = {}
    for name, content in data.items():
        paths[name] = tmp / f"{name}.csv"
        paths[name].write_bytes(content)
    return paths


def _submit(name: str, *extra: str) -> Callable[[Path, Known], list[str]]:
    return lambda tmp, _: ["submit", str(_files(tmp)[name]), "--detector", "ecod", *extra]


CLI_CASES = [
    CliCase("submit a ragged CSV", _submit("ragged"), r"422: line 3 has 1 cells; the header has 2"),
    CliCase("submit an empty file", _submit("empty"), r"422: dataset is empty"),
    CliCase("submit a binary file", _submit("binary"), r"422: dataset is not UTF-8 text"),
    CliCase("submit duplicate columns behind a BOM", _submit("duplicate"), r"422: duplicate column names: \['a'\]"),
    CliCase("submit a directory", lambda tmp, _: ["submit", str(tmp)], r"is a directory"),
    CliCase("contamination not a number", _submit("ok", "--contamination", "abc"), r"'abc' is not a valid float"),
    CliCase("threshold nan", _submit("ok", "--threshold", "nan"), r"422: threshold must be a finite number"),
    CliCase("unknown priority", _submit("ok", "--priority", "urgent"), r"'urgent' is not one of"),
    CliCase("unknown step", _submit("ok", "--steps", "detect,train"), r"422: pipeline steps must be among"),
    CliCase("unknown notify channel", _submit("ok", "--notify", "sms:x"), r"channel must be one of"),
    CliCase("parameter without a name", _submit("ok", "--param", "=2"), r"'=2' is not NAME=VALUE"),
    CliCase("negative wait timeout", _submit("ok", "--wait", "--timeout", "-5"), r"-5.0 is not in the range x>0"),
    CliCase("jobs limit 0", lambda tmp, _: ["jobs", "--limit", "0"], r"0 is not in the range 1<=x<=500"),
    CliCase("jobs negative offset", lambda tmp, _: ["jobs", "--offset", "-1"], r"-1 is not in the range x>=0"),
    CliCase("escape sequence in a job id", lambda tmp, _: ["job", "a\x1b[31mb"], r"404: no job 'a\\x1b\[31mb'"),
    CliCase(
        "job id with a query and a fragment", lambda tmp, _: ["job", "nope?x=1#frag"], r"404: no job 'nope\?x=1#frag'"
    ),
    CliCase("cancel an empty id", lambda tmp, _: ["cancel", ""], r"the id must not be empty"),
    CliCase("cancel '..'", lambda tmp, _: ["cancel", ".."], r"404: no job '\.\.'"),
    CliCase("report as pdf", lambda tmp, known: ["report", known.job_id, "--format", "pdf"], r"'pdf' is not one of"),
    CliCase(
        "dataset name with an escape",
        lambda tmp, _: ["datasets", "upload", str(_files(tmp)["ok"]), "--name", "x\x1b[2J"],
        r"422: name must be printable text",
    ),
    CliCase(
        "schedule without a data source",
        lambda tmp, _: ["schedules", "create", "--every", "3600"],
        r"422: give exactly one dataset source",
    ),
    CliCase(
        "schedule with a bad cron",
        lambda tmp, known: ["schedules", "create", "--cron", "61 * * * *", "--dataset", known.dataset_id],
        r"minute '61' is out of range",
    ),
    CliCase("show an empty schedule id", lambda tmp, _: ["schedules", "show", ""], r"the id must not be empty"),
    CliCase("delete schedule '..'", lambda tmp, _: ["schedules", "delete", ".."], r"404: no schedule '\.\.'"),
    CliCase(
        "replay a dead letter id with a query",
        lambda tmp, _: ["dlq", "replay", "x?y#z"],
        r"404: no dead letter 'x\?y#z'",
    ),
]


def test_there_are_enough_cli_cases() -> None:
    assert len(CLI_CASES) >= 10 and len({c.name for c in CLI_CASES}) == len(CLI_CASES)


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.name for c in CLI_CASES])
def test_hostile_cli_arguments_fail_with_one_clear_line(
    case: CliCase,
    local_system,
    known: Known,
    system_redis: redis.Redis,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    env = {"PYNOMALY_API_URL": local_system.api_url, "PYNOMALY_API_KEY": local_system.api_key, "COLUMNS": "250"}
    args = case.args(tmp_path, known)
    before = _idle(system_redis)
    result = CliRunner().invoke(main, args, env=env, input="")
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert re.search(case.error, errors[0]), (case.error, errors[0])
    assert snapshot(system_redis) == before, f"{case.name}: a refused command stored or enqueued something"
