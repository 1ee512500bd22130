"""A small HTTP client of the API, used by the CLI and the demo (and handy in tests and scripts)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from pynomaly.api import API_KEY_HEADER

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


class ApiError(RuntimeError):
    """The API answered with a problem; ``str()`` is its detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


def segment(value: str) -> str:
    """``value`` (an id from the command line) as exactly one URL path segment.

    Quoted, so '/', '%', '?', '#' and control characters stay in the id instead of naming another
    path or breaking the URL; '.' and '..' encoded too, as clients drop them as dot segments.
    """
    if not value:
        raise ApiError(0, "the id must not be empty")
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


class PynomalyClient:
    def __init__(self, base_url: str, api_key: str, timeout: float = 30.0) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers={API_KEY_HEADER: api_key}, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PynomalyClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach the API at {self._http.base_url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except (json.JSONDecodeError, AttributeError):
                detail = response.text
            raise ApiError(response.status_code, f"{response.status_code}: {detail}")
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def submit_csv(self, path: Path, detector: str | None, **options: Any) -> dict[str, Any]:
        """Submit a CSV file; ``detector`` None for a scoring job (``mode="score", model=...``)."""
        # Multipart fields are strings: objects and the notify list as JSON, steps comma-separated.
        form = {
            k: (
                json.dumps(v)
                if isinstance(v, dict) or k == "notify"
                else ",".join(v)
                if isinstance(v, list)
                else str(v)
            )
            for k, v in options.items()
            if v is not None
        }
        if detector is not None:
            form["detector"] = detector
        with path.open("rb") as handle:
            return self._call("POST", "/v1/jobs", data=form, files={"file": (path.name, handle, "text/csv")})

    def submit_rows(self, rows: list[Any], detector: str, **options: Any) -> dict[str, Any]:
        return self._call(
            "POST",
            "/v1/jobs",
            json={"rows": rows, "detector": detector, **{k: v for k, v in options.items() if v is not None}},
        )

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{segment(job_id)}")

    def jobs(self, **filters: Any) -> dict[str, Any]:
        return self._call("GET", "/v1/jobs", params={k: v for k, v in filters.items() if v is not None})

    def result(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{segment(job_id)}/result")

    def report(self, job_id: str, fmt: str) -> str:
        body = self._call("GET", f"/v1/jobs/{segment(job_id)}/report", params={"format": fmt})
        return body if isinstance(body, str) else json.dumps(body, indent=2)

    def notifications(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{segment(job_id)}/notifications")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/jobs/{segment(job_id)}")

    def delete_job(self, job_id: str) -> None:
        """Delete a finished job with its datasets, result and reports (``DELETE ...?purge=true``)."""
        self._call("DELETE", f"/v1/jobs/{segment(job_id)}", params={"purge": "true"})

    def retry(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{segment(job_id)}/retry")

    # -- models ------------------------------------------------------------------------------------
    def models(self, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        return self._call("GET", "/v1/models", params={"offset": offset, "limit": limit})

    def model(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/models/{segment(name)}")

    def model_version(self, name: str, version: int) -> dict[str, Any]:
        return self._call("GET", f"/v1/models/{segment(name)}/versions/{int(version)}")

    def promote(self, name: str, version: int) -> dict[str, Any]:
        return self._call("POST", f"/v1/models/{segment(name)}/promote", json={"version": version})

    def delete_model(self, name: str, version: int | None = None) -> None:
        """Delete a model, or only one of its versions."""
        path = f"/v1/models/{segment(name)}" + ("" if version is None else f"/versions/{int(version)}")
        self._call("DELETE", path)

    # -- stream bindings (live scoring) ---------------------------------------------------------
    def streams(self) -> dict[str, Any]:
        return self._call("GET", "/v1/streams")

    def stream(self, topic: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/streams/{segment(topic)}")

    def bind(
        self, topic: str, model: str, notify: list[dict[str, Any]] | None = None, notify_interval: int | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "notify": notify or []}
        if notify_interval is not None:
            body["notify_interval_seconds"] = notify_interval
        return self._call("PUT", f"/v1/streams/{segment(topic)}", json=body)

    def unbind(self, topic: str) -> None:
        self._call("DELETE", f"/v1/streams/{segment(topic)}")

    def detectors(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/detectors")

    def dead_letters(self, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        return self._call("GET", "/v1/dlq", params={"offset": offset, "limit": limit})

    def dead_letter(self, letter_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/dlq/{segment(letter_id)}")

    def replay(self, letter_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/dlq/{segment(letter_id)}/replay")

    def purge(self) -> dict[str, Any]:
        return self._call("DELETE", "/v1/dlq")

    def wait(
        self,
        job_id: str,
        timeout: float = 600.0,
        interval: float = 0.25,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job finishes; returns its final record."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_update:
                on_update(job)
            if job["status"] in TERMINAL_STATUSES:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f}s")
            time.sleep(interval)
