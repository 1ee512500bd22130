"""Domain errors.  The API maps them to problem+json responses, the CLI to one clear line."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""

    status = 400
    title = "Bad request"


class InvalidInput(DomainError):
    status = 422
    title = "Invalid input"


class NotFound(DomainError):
    status = 404
    title = "Not found"


class Conflict(DomainError):
    status = 409
    title = "Conflict"


class JobCancelled(DomainError):
    """Raised at a checkpoint when the job was cancelled meanwhile."""

    status = 409
    title = "Job cancelled"


class InsufficientStorage(DomainError):
    """Redis is close to its maxmemory: new work is refused before Redis itself refuses writes."""

    status = 507
    title = "Insufficient storage"

    def __init__(self, message: str, retry_after: int = 30) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DetectorFailed(InvalidInput):
    """The detector's library (PyOD, numpy, scikit-learn) raised on the job's data.

    The same data raises again on every run, so the job fails at once: no retry, no dead letter.
    """

    title = "Detector failed on the data"
