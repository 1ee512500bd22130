"""A step message from an earlier run, or for a finished job, is skipped instead of running twice.

Real Redis and Kafka through the worker's own Pipeline; the scenario it guards: a job cancelled
while queued and retried before a worker skipped its old message leaves two messages behind.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from pynomaly.config import Settings
from pynomaly.domain.datasets import Dataset
from pynomaly.domain.jobs import Job, JobStatus, Step, new_job_id, new_run_token
from pynomaly.usecases.pipeline import Pipeline
from pynomaly.wiring import Container

pytestmark = pytest.mark.services


@pytest.fixture
def container(settings: Settings) -> Iterator[Container]:
    c = Container(settings, "tests")
    yield c
    c.close()


def _job(container: Container) -> Job:
    job = Job(
        id=new_job_id(),
        detector="iforest",
        params={},
        contamination=0.1,
        threshold=None,
        priority="normal",
        steps=["preprocess", "detect"],
        preprocessing={"missing": "impute_median", "scaling": "none"},
        dataset={"rows": 3, "columns": ["a"]},
        run_token=new_run_token(),
    )
    container.jobs.create(job, Dataset(("a",), np.array([[1.0], [2.0], [3.0]])))
    return job


def test_a_message_of_an_earlier_run_is_skipped(container: Container) -> None:
    job = _job(container)
    flow = Pipeline(container.jobs, container.messaging)
    assert flow.begin(job.id, Step.PREPROCESS, 1, run_token="from-an-earlier-run") is None
    assert container.jobs.get(job.id).state is JobStatus.QUEUED  # untouched
    running = flow.begin(job.id, Step.PREPROCESS, 1, run_token=job.run_token)
    assert running is not None and running.state is JobStatus.RUNNING


def test_a_duplicate_message_for_a_finished_job_is_skipped(container: Container) -> None:
    job = _job(container)
    flow = Pipeline(container.jobs, container.messaging)
    assert flow.begin(job.id, Step.PREPROCESS, 1, run_token=job.run_token) is not None
    container.jobs.transition(job.id, JobStatus.COMPLETED)
    assert flow.begin(job.id, Step.DETECT, 1, run_token=job.run_token) is None
    assert container.jobs.get(job.id).state is JobStatus.COMPLETED


def test_retry_gives_the_job_a_new_token(container: Container) -> None:
    from pynomaly.usecases.jobs import JobService

    job = _job(container)
    service = JobService(container.jobs, container.messaging, container.dead_letters)
    container.jobs.request_cancel(job.id)
    retried = service.retry(job.id)
    assert retried.run_token and retried.run_token != job.run_token
    flow = Pipeline(container.jobs, container.messaging)
    assert flow.begin(job.id, Step.PREPROCESS, 1, run_token=job.run_token) is None  # the old message
