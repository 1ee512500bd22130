"""Each request's log scope.

:class:`RequestScope` wraps the whole application (pure ASGI, so it also encloses uvicorn's access
log line, written when the response is sent): a fresh log scope per request.  :func:`bind_path_ids`
(an app-wide dependency) adds the job id from the path to that scope once the route is known; the
submit route's job id is bound by the use case when it makes one.

The request's span is FastAPI's own (its native OpenTelemetry support, on whenever a tracer
provider is installed): a SERVER span named by the route that continues a caller's ``traceparent``.
"""

from __future__ import annotations

from opentelemetry import trace
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from pynomaly.observability import logs


class RequestScope:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        token = logs.push()  # a fresh scope: bind() calls of this request land here, not in another's
        try:
            await self.app(scope, receive, send)
        finally:
            logs.pop(token)


async def bind_path_ids(connection: HTTPConnection) -> None:
    """The job a request is about, in its log scope and on its span."""
    job_id = connection.path_params.get("job_id")
    if job_id:
        logs.bind(job_id=str(job_id))
        trace.get_current_span().set_attribute("pynomaly.job_id", str(job_id))
