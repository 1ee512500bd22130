"""Notification targets, rules and delivery, against a real SMTP server (aiosmtpd) and a real HTTP
server on 127.0.0.1.  The job store and message service are small in-memory stand-ins: what is under
test is validation, the fan-out decisions, the content and the wire protocols."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
from pathlib import Path
from typing import Any

import pytest

from pynomaly.domain.errors import InvalidInput, NotFound
from pynomaly.domain.jobs import Job, Step, parse_steps
from pynomaly.domain.notifications import NotificationTarget, Outcome, matching, parse_targets
from pynomaly.topology import Q_NOTIFICATIONS, S_NOTIFICATIONS, TASK_DELIVER, TOPOLOGY, Priority
from pynomaly.usecases.notifications import Deliverer, SmtpConfig, dispatch, email_html, email_text, job_targets
from pynomaly.usecases.pipeline import SIGNATURE_HEADER, PermanentFailure
from pynomaly.usecases.remote_datasets import WEBHOOK_ALLOWLIST, UrlPolicy
from tests.support.http import QuietHandler, serving
from tests.support.notify import free_port, http_receiver, self_signed_cert, smtp_server

SECRET = "s3cret-webhook-key"
# The test SMTP server takes AUTH without TLS on loopback; aiosmtpd warns about that on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


# -- validation and rules -------------------------------------------------------------------------


def test_targets_are_validated_and_normalised() -> None:
    targets = parse_targets(
        [
            {"channel": "email", "target": "ops@example.com"},
            {"channel": "webhook", "target": "https://hooks.example/x", "on": "failed"},
            {"channel": "email", "target": "oncall@example.com", "on": "anomaly_rate", "threshold": 0.2},
        ],
        webhook_url="http://legacy.example/hook",
    )
    assert [t.as_dict() for t in targets] == [
        {"channel": "webhook", "target": "http://legacy.example/hook", "on": "completed"},
        {"channel": "email", "target": "ops@example.com", "on": "completed"},
        {"channel": "webhook", "target": "https://hooks.example/x", "on": "failed"},
        {"channel": "email", "target": "oncall@example.com", "on": "anomaly_rate", "threshold": 0.2},
    ]
    assert parse_targets(None) == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"channel": "webhook", "target": "ftp://x.example/h"}, "notify[0].target must be an absolute http(s) URL"),
        ({"channel": "webhook", "target": "/relative"}, "absolute http(s) URL"),
        ({"channel": "email", "target": "not-an-address"}, "notify[0].target must be an e-mail address"),
        ({"channel": "email", "target": "a@b.com\r\nBcc: x@y.com"}, "e-mail address"),
        ({"channel": "sms", "target": "+1555"}, "notify[0].channel must be one of ['webhook', 'email']"),
        ({"channel": "email", "target": "a@b.com", "on": "always"}, "notify[0].on must be one of"),
        ({"channel": "email", "target": "a@b.com", "on": "anomaly_rate"}, "threshold must be an anomaly rate"),
        ({"channel": "email", "target": "a@b.com", "on": "anomaly_rate", "threshold": 1.5}, "in (0, 1]"),
        ({"channel": "email", "target": "a@b.com", "threshold": 0.1}, "only allowed with on=anomaly_rate"),
        ({"channel": "email", "target": "a@b.com", "cc": "x"}, "unknown field(s) ['cc']"),
        ("ops@example.com", "must be an object"),
    ],
)
def test_bad_targets_are_refused(raw: Any, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_targets([raw])
    assert message in str(info.value)


def test_target_count_is_capped() -> None:
    with pytest.raises(InvalidInput, match="at most 10"):
        parse_targets([{"channel": "email", "target": f"u{i}@example.com"} for i in range(11)])


def test_rules() -> None:
    stored = [
        t.as_dict()
        for t in parse_targets(
            [
                {"channel": "email", "target": "a@example.com", "on": "completed"},
                {"channel": "email", "target": "b@example.com", "on": "failed"},
                {"channel": "email", "target": "c@example.com", "on": "anomaly_rate", "threshold": 0.1},
            ]
        )
    ]
    assert matching(stored, Outcome.COMPLETED, 0.05) == [0]
    assert matching(stored, Outcome.COMPLETED, 0.1) == [0, 2]
    assert matching(stored, Outcome.FAILED, None) == [1]
    assert NotificationTarget("email", "x@example.com", "anomaly_rate", 0.5).matches(Outcome.COMPLETED, None) is False


def test_targets_add_the_report_and_notify_steps() -> None:
    assert parse_steps(["detect"], has_webhook=True) == [Step.DETECT, Step.REPORT, Step.NOTIFY]
    with pytest.raises(InvalidInput, match="needs a notification target"):
        parse_steps(["notify"], has_webhook=False)


# -- stand-ins for the job store and the message service ------------------------------------------


class Jobs:
    def __init__(self, job: Job, result: dict[str, Any] | None) -> None:
        self.job, self.result = job, result

    def get(self, job_id: str) -> Job:
        if job_id != self.job.id:
            raise NotFound(job_id)
        return self.job

    def has_blob(self, kind: str, job_id: str) -> bool:
        return kind == "result" and self.result is not None

    def get_blob(self, kind: str, job_id: str) -> dict[str, Any]:
        assert self.result is not None
        return self.result


class Messaging:
    def __init__(self) -> None:
        self.tasks: list[tuple[str, list[Any], Priority]] = []
        self.entries: list[tuple[str, dict[str, str]]] = []

    def enqueue_task(self, task: str, args: list[Any], kwargs: dict[str, Any], priority: Priority) -> str:
        self.tasks.append((task, args, priority))
        return "task-id"

    def stream_update(self, stream: str, fields: dict[str, str]) -> str:
        assert all(isinstance(v, str) for v in fields.values())
        self.entries.append((stream, fields))
        return "1-0"


TOP = [
    {"row": 39, "score": 9.87654, "contributions": {"temp": 0.7, "vibration": 0.3}},
    {"row": 12, "score": 4.5, "contributions": {"temp": 0.1, "vibration": 0.9}},
]


def make_job(notify: list[dict[str, Any]], **fields: Any) -> Job:
    base: dict[str, Any] = {
        "id": "job-123",
        "detector": "ecod",
        "params": {},
        "contamination": 0.1,
        "threshold": None,
        "priority": "high",
        "steps": ["detect", "report", "notify"],
        "preprocessing": {},
        "dataset": {"rows": 40, "columns": 2},
        "result_location": "result:job-123",
        "notify": notify,
    }
    return Job(**{**base, **fields})


RESULT = {"anomaly_count": 2, "anomaly_rate": 0.05, "top_anomalies": TOP}


def test_dispatch_enqueues_one_task_per_matching_target() -> None:
    notify = [
        t.as_dict()
        for t in parse_targets(
            [
                {"channel": "email", "target": "a@example.com"},
                {"channel": "webhook", "target": "http://h.example/x", "on": "failed"},
                {"channel": "webhook", "target": "http://h.example/y", "on": "anomaly_rate", "threshold": 0.01},
            ]
        )
    ]
    job = make_job(notify)
    mq = Messaging()
    assert dispatch(Jobs(job, RESULT), mq, job, Outcome.COMPLETED) == {"notifications_queued": 2}  # type: ignore[arg-type]
    assert mq.tasks == [
        (TASK_DELIVER, ["job-123", 0, "completed"], Priority.HIGH),
        (TASK_DELIVER, ["job-123", 2, "completed"], Priority.HIGH),
    ]
    assert TOPOLOGY.task(TASK_DELIVER).queue == Q_NOTIFICATIONS
    assert [(s, f["status"], f["index"]) for s, f in mq.entries] == [
        (S_NOTIFICATIONS, "queued", "0"),
        (S_NOTIFICATIONS, "queued", "2"),
    ]

    mq = Messaging()
    dispatch(Jobs(job, None), mq, job, Outcome.FAILED)  # type: ignore[arg-type]
    assert [t[1] for t in mq.tasks] == [["job-123", 1, "failed"]]


def test_legacy_jobs_with_only_a_webhook_url_still_notify() -> None:
    job = make_job([], webhook_url="http://h.example/legacy")
    assert job_targets(job) == [{"channel": "webhook", "target": "http://h.example/legacy", "on": "completed"}]


# -- content ------------------------------------------------------------------------------------


def summary(outcome: str = "completed") -> dict[str, Any]:
    job = make_job([], error="boom" if outcome == "failed" else None)
    d = Deliverer(Jobs(job, RESULT), Messaging(), public_url="https://pynomaly.example/")  # type: ignore[arg-type]
    return d.summary(job, Outcome(outcome), {"on": outcome})


def test_email_bodies_list_the_top_anomalies_and_link_the_report() -> None:
    s = summary()
    text, page = email_text(s), email_html(s)
    assert "row     39  score 9.8765  temp +0.700, vibration +0.300" in text
    assert "Anomaly rate:  5.0%" in text
    assert "Report: https://pynomaly.example/v1/jobs/job-123/report?format=html" in text
    assert "<td>39</td><td>9.8765</td>" in page and "<td>12</td><td>4.5000</td>" in page
    assert 'href="https://pynomaly.example/v1/jobs/job-123/report?format=html"' in page


def test_html_body_escapes_what_users_control() -> None:
    s = {**summary("failed"), "error": "<script>alert(1)</script>"}
    assert "<script>" not in email_html(s) and "&lt;script&gt;" in email_html(s)
    assert "Error:         <script>alert(1)</script>" in email_text(s)


# -- delivery over the wire -----------------------------------------------------------------------


# The receivers here listen on loopback: allowlisted, as PYNOMALY_WEBHOOK_URL_ALLOWLIST does in the e2e tests.
LOOPBACK_ALLOWED = UrlPolicy.parse("127.0.0.0/8", WEBHOOK_ALLOWLIST)


def deliverer(
    job: Job, mq: Messaging, smtp: SmtpConfig | None = None, webhooks: UrlPolicy = LOOPBACK_ALLOWED, **kw: Any
) -> Deliverer:
    return Deliverer(Jobs(job, RESULT), mq, SECRET, "https://pynomaly.example", smtp, webhooks, **kw)  # type: ignore[arg-type]


def test_email_is_delivered_with_text_html_and_credentials() -> None:
    job = make_job([t.as_dict() for t in parse_targets([{"channel": "email", "target": "ops@example.com"}])])
    with smtp_server(credentials=("mailer", "pw-from-secret")) as sink:
        cfg = SmtpConfig(sink.host, sink.port, "none", "mailer", "pw-from-secret", "alerts@pynomaly.example", 5.0)
        mq = Messaging()
        out = deliverer(job, mq, cfg).deliver("job-123", 0, "completed", 1)
        (message,) = sink.to("ops@example.com")
    assert sink.logins == ["mailer"]
    assert out["channel"] == "email"
    assert message["From"] == "alerts@pynomaly.example"
    assert message["Subject"] == "[pynomaly] job job-123 completed: 2 anomalies (5.0%)"
    plain = message.get_body(("plain",)).get_content()
    html_part = message.get_body(("html",)).get_content()
    assert "row     39" in plain and "<td>39</td>" in html_part
    assert mq.entries[-1][1]["status"] == "delivered" and mq.entries[-1][1]["channel"] == "email"


def test_wrong_smtp_password_is_permanent() -> None:
    job = make_job([{"channel": "email", "target": "ops@example.com", "on": "completed"}])
    with smtp_server(credentials=("mailer", "right")) as sink:
        cfg = SmtpConfig(sink.host, sink.port, "none", "mailer", "wrong", "a@pynomaly.example", 5.0)
        with pytest.raises(PermanentFailure, match="535"):
            deliverer(job, Messaging(), cfg).deliver("job-123", 0, "completed", 1)
        assert sink.messages == []


def test_unreachable_smtp_is_transient_and_unconfigured_smtp_permanent() -> None:
    job = make_job([{"channel": "email", "target": "ops@example.com", "on": "completed"}])
    with pytest.raises(ConnectionError):
        deliverer(job, Messaging(), SmtpConfig("127.0.0.1", free_port(), "none", timeout=2)).deliver(
            "job-123", 0, "completed", 1
        )
    with pytest.raises(PermanentFailure, match="PYNOMALY_SMTP_HOST"):
        deliverer(job, Messaging(), SmtpConfig()).deliver("job-123", 0, "completed", 1)


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_starttls_and_implicit_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, security: str) -> None:
    cert, key = self_signed_cert(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    # The client verifies the server: trust the test's own CA instead of the system store.
    real = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda *a, **k: real(cafile=str(cert)))
    job = make_job([{"channel": "email", "target": "ops@example.com", "on": "completed"}])
    if security == "starttls":
        server = smtp_server(credentials=("mailer", "pw"), tls_context=server_ctx)
    else:
        server = _implicit_tls_server(server_ctx)
    with server as sink:
        user = "mailer" if security == "starttls" else ""  # the implicit-TLS server here has no AUTH
        cfg = SmtpConfig(sink.host, sink.port, security, user, "pw", "a@pynomaly.example", 5.0)
        deliverer(job, Messaging(), cfg).deliver("job-123", 0, "completed", 1)
        assert len(sink.to("ops@example.com")) == 1


def _implicit_tls_server(ctx: ssl.SSLContext) -> Any:
    import contextlib

    from aiosmtpd.controller import Controller

    from tests.support.notify import LOOPBACK, SmtpSink

    @contextlib.contextmanager
    def run() -> Any:
        sink = SmtpSink(LOOPBACK, free_port())
        controller = Controller(sink, hostname=LOOPBACK, port=sink.port, ssl_context=ctx)
        controller.start()
        try:
            yield sink
        finally:
            controller.stop()

    return run()


def test_webhook_is_signed_and_status_codes_are_classified() -> None:
    job = make_job([{"channel": "webhook", "target": "", "on": "completed"}])
    with http_receiver() as receiver:
        job.notify[0]["target"] = receiver.url()
        mq = Messaging()
        assert deliverer(job, mq).deliver("job-123", 0, "completed", 1)["detail"] == "HTTP 200"
        ((headers, body),) = receiver.hits("/hook")
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers[SIGNATURE_HEADER.lower()] == expected
        payload = json.loads(body)
        assert payload["job_id"] == "job-123" and payload["status"] == "completed"
        assert payload["top_anomalies"][0]["row"] == 39
        assert payload["report_url"] == "https://pynomaly.example/v1/jobs/job-123/report?format=html"

        receiver.statuses[:] = [503, 429, 404]
        with pytest.raises(ConnectionError, match="503"):
            deliverer(job, mq).deliver("job-123", 0, "completed", 2)
        with pytest.raises(ConnectionError, match="429"):
            deliverer(job, mq).deliver("job-123", 0, "completed", 3)
        with pytest.raises(PermanentFailure, match="404"):
            deliverer(job, mq).deliver("job-123", 0, "completed", 4)


def test_unknown_target_index_is_permanent() -> None:
    job = make_job([])
    with pytest.raises(PermanentFailure, match="no notification target #3"):
        deliverer(job, Messaging()).deliver("job-123", 3, "completed", 1)


# -- webhook targets against the outbound-URL policy at delivery time ------------------------------


def test_a_host_that_resolves_inside_now_is_refused_at_delivery_and_nothing_is_sent() -> None:
    """DNS rebinding: the name passed at submit; at delivery it answers with loopback."""
    job = make_job([{"channel": "webhook", "target": "", "on": "completed"}])
    with http_receiver() as receiver:
        port = receiver.server.server_address[1]
        job.notify[0]["target"] = f"http://hooks.example:{port}/hook"
        rebound = {"resolve": lambda host, _port: ["127.0.0.1"] if host == "hooks.example" else []}
        for policy in (UrlPolicy(setting=WEBHOOK_ALLOWLIST), UrlPolicy.parse("10.0.0.0/8", WEBHOOK_ALLOWLIST)):
            with pytest.raises(
                PermanentFailure, match=r"hooks\.example' resolves to 127\.0\.0\.1.*WEBHOOK_URL_ALLOWLIST"
            ):
                deliverer(job, Messaging(), webhooks=policy, **rebound).deliver("job-123", 0, "completed", 1)
        # The default Deliverer (no policy given) refuses too.
        plain = Deliverer(Jobs(job, RESULT), Messaging(), SECRET, resolve=rebound["resolve"])  # type: ignore[arg-type]
        with pytest.raises(PermanentFailure, match=r"resolves to 127\.0\.0\.1"):
            plain.deliver("job-123", 0, "completed", 1)
        assert receiver.requests == []
        # Opened on purpose by name: delivered to the checked address, the Host header keeps the name.
        named = UrlPolicy.parse("hooks.example", WEBHOOK_ALLOWLIST)
        assert deliverer(job, Messaging(), webhooks=named, **rebound).deliver("job-123", 0, "completed", 1)
        ((path, headers, _body),) = receiver.requests
        assert path == "/hook" and headers["host"] == f"hooks.example:{port}"


def test_redirects_are_checked_and_only_body_keeping_ones_followed() -> None:
    job = make_job([{"channel": "webhook", "target": "", "on": "completed"}])
    with http_receiver() as inside:
        inside_url = inside.url()
        answers: list[tuple[int, str]] = []

        class Redirecting(QuietHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                code, location = answers.pop(0)
                self.send_response(code)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

        with serving(Redirecting) as server:
            job.notify[0]["target"] = f"http://front.example:{server.server_address[1]}/hook"
            # Only front.example is open: its redirect to 127.0.0.1 (or to cloud metadata) is refused.
            front_only = UrlPolicy.parse("front.example", WEBHOOK_ALLOWLIST)
            resolve = {"resolve": lambda host, _port: ["127.0.0.1"] if host == "front.example" else []}
            for location in (inside_url, "http://169.254.169.254/latest/meta-data/", "http://[::ffff:127.0.0.1]:1/"):
                answers[:] = [(307, location)]
                with pytest.raises(PermanentFailure, match="refused: webhook target host"):
                    deliverer(job, Messaging(), webhooks=front_only, **resolve).deliver("job-123", 0, "completed", 1)
            assert inside.requests == [], "a refused redirect reached its target"
            # A 302 would turn the POST into a GET: not followed, and not a delivery either.
            answers[:] = [(302, inside_url)]
            with pytest.raises(PermanentFailure, match="302"):
                deliverer(job, Messaging(), webhooks=LOOPBACK_ALLOWED, **resolve).deliver("job-123", 0, "completed", 1)
            assert inside.requests == []
            # An allowed 308 is followed with the same signed body.
            answers[:] = [(308, inside_url)]
            out = deliverer(job, Messaging(), webhooks=LOOPBACK_ALLOWED, **resolve).deliver(
                "job-123", 0, "completed", 1
            )
            assert out["detail"] == "HTTP 200"
            ((_path, headers, body),) = inside.requests
            assert (
                headers[SIGNATURE_HEADER.lower()]
                == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            )
