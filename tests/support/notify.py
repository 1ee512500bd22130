"""Real receivers for notification tests: an SMTP server (aiosmtpd on 127.0.0.1) and an HTTP server.

Both record what they receive; tests read the delivered messages and check content and signature.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.http import (
    LOOPBACK,
    QuietHandler,
    serving,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass
class SmtpSink:
    """What the SMTP server accepted: envelopes and the parsed messages."""

    host: str
    port: int
    messages: list[tuple[str, list[str], EmailMessage]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), parsed))  # type: ignore[arg-type]
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for _, rcpts, m in self.messages if address in rcpts]


def _authenticator(sink: SmtpSink, user: str, password: str) -> Any:
    def check(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            user.encode(),
            password.encode(),
        )
        if ok:
            sink.logins.append(user)
        return AuthResult(success=ok, handled=False)

    return check


@contextlib.contextmanager
def smtp_server(
    credentials: tuple[str, str] | None = None, tls_context: ssl.SSLContext | None = None
) -> Iterator[SmtpSink]:
    """An SMTP server on 127.0.0.1 until the block ends; AUTH required with ``credentials``;
    STARTTLS offered with ``tls_context``."""
    sink = SmtpSink(LOOPBACK, free_port())
    kwargs: dict[str, Any] = {}
    if credentials:
        kwargs.update(authenticator=_authenticator(sink, *credentials), auth_required=True)
        kwargs["auth_require_tls"] = tls_context is not None
    if tls_context is not None:
        kwargs.update(tls_context=tls_context, require_starttls=True)
    controller = Controller(sink, hostname=LOOPBACK, port=sink.port, **kwargs)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 made by the openssl CLI: (cert, key)."""
    cert, key = directory / "smtp.crt", directory / "smtp.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@dataclass
class HttpReceiver:
    """A real HTTP server on 127.0.0.1; answers ``status`` (or the next of ``statuses``) to each POST."""

    server: ThreadingHTTPServer
    status: int = 200
    statuses: list[int] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    def url(self, path: str = "/hook") -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def hits(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for p, h, b in list(self.requests) if p == path]

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(b) for _, b in self.hits(path)]


@contextlib.contextmanager
def http_receiver(status: int = 200, fail_paths: tuple[str, ...] = ()) -> Iterator[HttpReceiver]:
    """Serve on 127.0.0.1 until the block ends; POSTs to ``fail_paths`` (``receiver.failing``) get 503."""
    receiver: HttpReceiver

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            code = (
                503
                if self.path in receiver.failing
                else (receiver.statuses.pop(0) if receiver.statuses else receiver.status)
            )
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    with serving(Handler) as server:
        receiver = HttpReceiver(server, status, failing=set(fail_paths))
        yield receiver
