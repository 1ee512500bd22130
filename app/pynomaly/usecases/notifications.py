"""Notifications on the worker side: fan out one delivery task per target, then deliver each one.

- :func:`dispatch` runs in the notify step (job completed) and when a job fails for good: it picks
  the job's targets whose rule matches and enqueues one ``deliver_notification`` task per target on
  the ``notifications`` queue.  The job's own state never waits for a delivery.
- :class:`Deliverer` delivers one target: a webhook (JSON body signed with HMAC-SHA256 in
  ``X-Pynomaly-Signature``) or an e-mail through SMTP (plain text + HTML, top anomalies, report link).
  Transient failures raise ``ConnectionError`` (the task retries with backoff, then dead-letters);
  failures retrying cannot fix raise :class:`~pynomaly.usecases.pipeline.PermanentFailure`.
- Every outcome (queued, delivered, retrying, failed, dead-lettered) is an entry on
  ``notifications:stream``; the ``notifiers`` stream group keeps them per job.
"""

from __future__ import annotations

import html
import json
import logging
import smtplib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import httpx

from pynomaly.domain.errors import InvalidInput
from pynomaly.domain.jobs import Job
from pynomaly.domain.notifications import Channel, NotificationTarget, Outcome, matching
from pynomaly.messaging.service import MessageQueueService
from pynomaly.storage.jobs import JobStore
from pynomaly.topology import S_NOTIFICATIONS, TASK_DELIVER, Priority
from pynomaly.usecases.pipeline import SIGNATURE_HEADER, WEBHOOK_TIMEOUT, PermanentFailure, sign
from pynomaly.usecases.remote_datasets import (
    BODY_KEEPING_REDIRECTS,
    WEBHOOK_ALLOWLIST,
    FetchFailed,
    Resolver,
    UrlPolicy,
    checked_request,
    system_resolver,
)

log = logging.getLogger(__name__)

TOP_ANOMALIES = 5


def job_targets(job: Job) -> list[dict[str, Any]]:
    """The job's stored targets; jobs stored before ``notify`` existed had only ``webhook_url``."""
    if job.notify:
        return list(job.notify)
    if job.webhook_url:
        return [NotificationTarget(Channel.WEBHOOK.value, job.webhook_url).as_dict()]
    return []


def _anomaly_rate(jobs: JobStore, job: Job) -> float | None:
    if not job.result_location or not jobs.has_blob("result", job.id):
        return None
    return float(jobs.get_blob("result", job.id)["anomaly_rate"])


def dispatch(jobs: JobStore, mq: MessageQueueService, job: Job, outcome: Outcome) -> dict[str, Any]:
    """Enqueue one delivery task per target whose rule matches ``outcome``."""
    targets = job_targets(job)
    if not targets:
        return {"notifications_queued": 0}
    rate = _anomaly_rate(jobs, job) if outcome is Outcome.COMPLETED else None
    chosen = matching(targets, outcome, rate)
    for index in chosen:
        mq.enqueue_task(TASK_DELIVER, [job.id, index, outcome.value], {}, Priority(job.priority))
        record(mq, job.id, index, targets[index], outcome, "queued", 0)
    return {"notifications_queued": len(chosen)}


def record(
    mq: MessageQueueService,
    job_id: str,
    index: int,
    target: dict[str, Any],
    outcome: Outcome | str,
    status: str,
    attempt: int,
    detail: str = "",
) -> None:
    """One delivery outcome on notifications:stream (best effort: never fails a delivery)."""
    fields = {
        "job_id": job_id,
        "index": str(index),
        "channel": str(target.get("channel", "")),
        "target": str(target.get("target", "")),
        "on": str(target.get("on", "")),
        "outcome": outcome.value if isinstance(outcome, Outcome) else str(outcome),
        "status": status,
        "attempt": str(attempt),
        "detail": detail[:500],
    }
    try:
        mq.stream_update(S_NOTIFICATIONS, fields)
    except Exception:
        log.exception("could not record notification %s/%s on %s", job_id, index, S_NOTIFICATIONS)


@dataclass(frozen=True)
class SmtpConfig:
    host: str = ""
    port: int = 587
    security: str = "starttls"  # none | starttls | tls
    username: str = ""
    password: str = ""
    sender: str = "pynomaly@localhost"
    timeout: float = 10.0

    @classmethod
    def from_settings(cls, settings: Any) -> SmtpConfig:
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password.get_secret_value(),
            sender=settings.smtp_from,
            timeout=settings.smtp_timeout,
        )


class Deliverer:
    def __init__(
        self,
        jobs: JobStore,
        messaging: MessageQueueService,
        webhook_secret: str = "",
        public_url: str = "",
        smtp: SmtpConfig | None = None,
        webhooks: UrlPolicy | None = None,
        resolve: Resolver = system_resolver,
    ) -> None:
        self._jobs = jobs
        self._mq = messaging
        self._secret = webhook_secret
        self._public_url = public_url.rstrip("/")
        self._smtp = smtp or SmtpConfig()
        # Checked again here, against what the host resolves to now (DNS rebinding after submit).
        self._webhooks = webhooks or UrlPolicy(setting=WEBHOOK_ALLOWLIST)
        self._resolve = resolve

    def target(self, job: Job, index: int) -> dict[str, Any]:
        targets = job_targets(job)
        if not 0 <= index < len(targets):
            raise PermanentFailure(f"job {job.id} has no notification target #{index}")
        return targets[index]

    def deliver(self, job_id: str, index: int, outcome: str, attempt: int) -> dict[str, Any]:
        job = self._jobs.get(job_id)
        target = self.target(job, index)
        summary = self.summary(job, Outcome(outcome), target)
        if target["channel"] == Channel.WEBHOOK.value:
            detail = self._post(target["target"], summary)
        else:
            detail = self._mail(target["target"], summary)
        record(self._mq, job.id, index, target, outcome, "delivered", attempt, detail)
        return {"job_id": job.id, "index": index, "channel": target["channel"], "detail": detail}

    def deliver_anomaly(
        self, anomaly: dict[str, Any], target: dict[str, Any], attempt: int, index: int = 0
    ) -> dict[str, Any]:
        """One live anomaly of a stream binding to one target (the scorer applied the rate limit)."""
        body = anomaly_summary(anomaly)
        if target.get("channel") == Channel.WEBHOOK.value:
            detail = self._post(str(target["target"]), body)
        elif target.get("channel") == Channel.EMAIL.value:
            to = str(target["target"])
            detail = self._send(to, lambda: self.anomaly_message(to, body))
        else:
            raise PermanentFailure(f"unknown notification channel {target.get('channel')!r}")
        record_anomaly(self._mq, body, index, target, "delivered", attempt, detail)
        return {"event_id": body["event_id"], "channel": target["channel"], "detail": detail}

    def anomaly_message(self, to: str, body: dict[str, Any]) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self._smtp.sender
        msg["To"] = to
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = make_msgid(domain="pynomaly")
        msg["Subject"] = f"[pynomaly] anomaly on {body['topic']}: {body['entity']}"[:200]
        text = anomaly_text(body)
        msg.set_content(text)
        msg.add_alternative(f"<!doctype html><html><body><pre>{html.escape(text)}</pre></body></html>", subtype="html")
        return msg

    # -- content ---------------------------------------------------------------------------------
    def report_url(self, job: Job) -> str | None:
        return f"{self._public_url}/v1/jobs/{job.id}/report?format=html" if self._public_url else None

    def summary(self, job: Job, outcome: Outcome, target: dict[str, Any]) -> dict[str, Any]:
        result = self._jobs.get_blob("result", job.id) if self._jobs.has_blob("result", job.id) else None
        return {
            "job_id": job.id,
            "status": outcome.value,
            "rule": {k: v for k, v in target.items() if k in ("on", "threshold")},
            "detector": job.detector,
            "rows": job.dataset.get("rows"),
            "anomaly_count": result["anomaly_count"] if result else None,
            "anomaly_rate": result["anomaly_rate"] if result else None,
            "top_anomalies": result["top_anomalies"][:TOP_ANOMALIES] if result else [],
            "error": job.error if outcome is Outcome.FAILED else None,
            "report_url": self.report_url(job) if result else None,
            "finished_at": job.finished_at,
        }

    # -- webhook ---------------------------------------------------------------------------------
    def _post(self, url: str, summary: dict[str, Any]) -> str:
        body = json.dumps(summary, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "pynomaly-webhook"}
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        try:
            # trust_env=False: no proxy from the environment; the request goes to the checked address.
            with (
                httpx.Client(timeout=WEBHOOK_TIMEOUT, follow_redirects=False, trust_env=False) as client,
                checked_request(
                    client, "POST", url, self._webhooks, field="webhook target", headers=headers, content=body,
                    resolve=self._resolve, follow=lambda r: r.status_code in BODY_KEEPING_REDIRECTS,
                ) as (final, response),
            ):  # fmt: skip
                status = response.status_code
        except InvalidInput as exc:  # refused by the policy (now, or at a redirect): no retry helps
            raise PermanentFailure(f"webhook {url} refused: {exc}") from exc
        except FetchFailed as exc:
            raise PermanentFailure(f"webhook {url}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise ConnectionError(f"webhook {url}: {exc}") from exc
        if status >= 500 or status == 429:
            raise ConnectionError(f"webhook {final} answered {status}")
        if status >= 300:  # 4xx, or a redirect that would turn the POST into a GET
            raise PermanentFailure(f"webhook {final} rejected the notification: {status}")
        return f"HTTP {status}"

    # -- e-mail ----------------------------------------------------------------------------------
    def message(self, to: str, summary: dict[str, Any]) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self._smtp.sender
        msg["To"] = to
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = make_msgid(domain="pynomaly")
        msg["Subject"] = email_subject(summary)
        msg.set_content(email_text(summary))
        msg.add_alternative(email_html(summary), subtype="html")
        return msg

    def _mail(self, to: str, summary: dict[str, Any]) -> str:
        return self._send(to, lambda: self.message(to, summary))

    def _send(self, to: str, build: Callable[[], EmailMessage]) -> str:
        cfg = self._smtp
        if not cfg.host:
            raise PermanentFailure("e-mail notifications are not configured (PYNOMALY_SMTP_HOST is empty)")
        msg = build()
        try:
            send_mail(cfg, msg)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if all(code >= 500 for code in codes):
                raise PermanentFailure(f"SMTP {cfg.host} refused {to}: {exc.recipients}") from exc
            raise ConnectionError(f"SMTP {cfg.host} deferred {to}: {exc.recipients}") from exc
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code >= 500:
                raise PermanentFailure(f"SMTP {cfg.host}: {exc.smtp_code} {exc.smtp_error!r}") from exc
            raise ConnectionError(f"SMTP {cfg.host}: {exc.smtp_code} {exc.smtp_error!r}") from exc
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            raise ConnectionError(f"SMTP {cfg.host}:{cfg.port}: {type(exc).__name__}: {exc}") from exc
        return f"sent to {to} via {cfg.host}:{cfg.port}"


ANOMALY_FIELDS = (
    "event_id", "topic", "entity", "model", "version", "detector", "score", "threshold", "values",
    "timestamp", "produced_at", "scored_at", "latency_ms", "notify_interval_seconds",
)  # fmt: skip


def record_anomaly(
    mq: MessageQueueService,
    anomaly: dict[str, Any],
    index: int,
    target: dict[str, Any],
    status: str,
    attempt: int,
    detail: str = "",
) -> None:
    """A live anomaly's delivery outcome on notifications:stream.  Without a job id: it is not kept
    per job (a busy stream's log would grow for as long as the stream runs), only on the capped stream."""
    about = f"{anomaly.get('topic')} {anomaly.get('entity')} event {anomaly.get('event_id')}"
    record(mq, "", index, target, "anomaly", status, attempt, f"{about}: {detail}" if detail else about)


def anomaly_summary(anomaly: dict[str, Any]) -> dict[str, Any]:
    """The webhook body (and e-mail facts) of one live anomaly."""
    return {"status": "anomaly", **{name: anomaly.get(name) for name in ANOMALY_FIELDS}}


def anomaly_text(body: dict[str, Any]) -> str:
    values = body.get("values") or {}
    lines = [
        f"Pynomaly scored a record of {body['entity']} on {body['topic']} as an anomaly.",
        "",
        f"Entity:     {body['entity']}",
        f"Model:      {body['model']}:{body['version']} ({body['detector']})",
        f"Score:      {float(body['score']):.4f} (threshold {float(body['threshold']):.4f})",
        f"Measured:   {body.get('timestamp') or '—'}",
        f"Produced:   {body['produced_at']}",
        f"Scored:     {body['scored_at']} ({body['latency_ms']} ms later)",
        "",
        "Values: " + ", ".join(f"{k} {v}" for k, v in values.items()),
        "",
        f"At most one notification per entity every {body['notify_interval_seconds']} s.",
        f"Event: {body['event_id']}",
    ]
    return "\n".join(lines) + "\n"


def send_mail(cfg: SmtpConfig, msg: EmailMessage) -> None:
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if cfg.security == "tls":
        client = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, context=context)
    else:
        client = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
    with client:
        client.ehlo()
        if cfg.security == "starttls":
            client.starttls(context=context)
            client.ehlo()
        if cfg.username:
            client.login(cfg.username, cfg.password)
        client.send_message(msg)


def _rate(summary: dict[str, Any]) -> str:
    rate = summary.get("anomaly_rate")
    return "—" if rate is None else f"{rate:.1%}"


def email_subject(summary: dict[str, Any]) -> str:
    # The short id keeps the subject on one header line (a folded Subject reads with a leading blank).
    job = summary["job_id"][:8]
    if summary["status"] == Outcome.FAILED.value:
        return f"[pynomaly] job {job} failed"
    return f"[pynomaly] job {job} completed: {summary['anomaly_count']} anomalies ({_rate(summary)})"


def _contributions(anomaly: dict[str, Any], limit: int = 3) -> list[tuple[str, float]]:
    raw = anomaly.get("contributions") or {}
    pairs = raw.items() if isinstance(raw, dict) else []
    return sorted(((str(k), float(v)) for k, v in pairs), key=lambda kv: -abs(kv[1]))[:limit]


def email_text(summary: dict[str, Any]) -> str:
    lines = [
        f"Pynomaly job {summary['job_id']} {summary['status']}.",
        "",
        f"Detector:      {summary['detector']}",
        f"Rows:          {summary['rows']}",
    ]
    if summary["status"] == Outcome.FAILED.value:
        lines.append(f"Error:         {summary['error']}")
    else:
        lines += [f"Anomalies:     {summary['anomaly_count']}", f"Anomaly rate:  {_rate(summary)}"]
    if summary["top_anomalies"]:
        lines += ["", "Top anomalies (row, score, strongest features):"]
        for a in summary["top_anomalies"]:
            features = ", ".join(f"{k} {v:+.3f}" for k, v in _contributions(a))
            lines.append(f"  row {a['row']:>6}  score {float(a['score']):.4f}  {features}")
    if summary["report_url"]:
        lines += ["", f"Report: {summary['report_url']}"]
    return "\n".join(lines) + "\n"


def email_html(summary: dict[str, Any]) -> str:
    e = html.escape
    failed = summary["status"] == Outcome.FAILED.value
    facts = [("Detector", summary["detector"]), ("Rows", summary["rows"])]
    facts += (
        [("Error", summary["error"])]
        if failed
        else [("Anomalies", summary["anomaly_count"]), ("Anomaly rate", _rate(summary))]
    )
    rows = "".join(f"<tr><th align=left>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in facts)
    table = ""
    if summary["top_anomalies"]:
        body = "".join(
            f"<tr><td>{e(str(a['row']))}</td><td>{float(a['score']):.4f}</td>"
            f"<td>{e(', '.join(f'{k} {v:+.3f}' for k, v in _contributions(a)))}</td></tr>"
            for a in summary["top_anomalies"]
        )
        table = (
            "<h3>Top anomalies</h3><table border=1 cellpadding=4 cellspacing=0>"
            "<tr><th>row</th><th>score</th><th>strongest features</th></tr>" + body + "</table>"
        )
    link = f'<p><a href="{e(summary["report_url"])}">Open the report</a></p>' if summary["report_url"] else ""
    title = f"Job {e(summary['job_id'])} {e(summary['status'])}"
    return (
        f"<!doctype html><html><body><h2>{title}</h2><table>{rows}</table>{table}{link}"
        "<p style='color:#888'>Sent by Pynomaly.</p></body></html>"
    )
