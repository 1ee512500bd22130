"""Schedules without services: cron and interval validation, notification rules, SSRF checks of dataset URLs."""

from __future__ import annotations

import httpx
import pytest

from pynomaly.domain.errors import InvalidInput
from pynomaly.domain.schedules import Schedule, parse_cron, validate_interval, validate_notify, validate_timing
from pynomaly.messaging.beat import celery_schedule
from pynomaly.usecases.remote_datasets import FetchFailed, UrlPolicy, check_url, fetch_dataset
from tests.support.http import QuietHandler, serving

NO_LIST = UrlPolicy()


@pytest.mark.parametrize(
    "expr",
    ["* * * * *", "*/5 * * * *", "0 9-17 * * mon-fri", "15,45 0 1 1-12/3 0", "0 0 31 12 sat", "0-30/10 */2 * * *"],
)
def test_valid_cron_expressions_are_accepted_and_celery_agrees(expr: str) -> None:
    fields = parse_cron(expr)
    assert list(fields) == ["minute", "hour", "day_of_month", "month_of_year", "day_of_week"]
    item = Schedule(id="s", name="s", detector="knn", params={}, cron=expr)
    celery_schedule(item)  # Celery's own parser takes every expression the domain accepts


@pytest.mark.parametrize(
    ("expr", "why"),
    [
        ("", "five-field"),
        ("* * * *", "4 field"),
        ("* * * * * *", "6 field"),
        ("60 * * * *", "out of range"),
        ("* 24 * * *", "out of range"),
        ("* * 0 * *", "out of range"),
        ("* * * 13 *", "out of range"),
        ("* * * * 7", "out of range"),
        ("*/0 * * * *", "invalid step"),
        ("5/10 * * * *", "step without a range"),
        ("10-5 * * * *", "backwards"),
        ("a * * * *", "not a number"),
        ("@hourly", "field"),
    ],
)
def test_invalid_cron_expressions_are_rejected_clearly(expr: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        parse_cron(expr)


def test_interval_validation() -> None:
    assert validate_interval(60, 60) == 60
    assert validate_interval(90.0, 60) == 90
    for bad, why in ((59, "under the minimum of 60"), (1.5, "whole number"), (True, "whole number"), ("60", "whole")):
        with pytest.raises(InvalidInput, match=why):
            validate_interval(bad, 60)
    with pytest.raises(InvalidInput, match="at most a year"):
        validate_interval(10**9, 60)


def test_exactly_one_timing() -> None:
    assert validate_timing("*/5 * * * *", None, 60) == ("*/5 * * * *", None)
    assert validate_timing(None, 120, 60) == (None, 120)
    for cron, interval in ((None, None), ("* * * * *", 60)):
        with pytest.raises(InvalidInput, match="exactly one of cron or interval_seconds"):
            validate_timing(cron, interval, 60)


def test_notify_rules_are_checked_and_kept() -> None:
    rules = [
        {"channel": "webhook", "target": "https://hooks.example.com/x", "on": "completed"},
        {"channel": "email", "target": "ops@example.com", "on": "anomaly_rate", "threshold": 0.05},
        {"channel": "email", "target": "oncall@example.com"},
    ]
    assert validate_notify(rules)[1] == rules[1]
    assert validate_notify(rules)[2]["on"] == "completed"
    for bad, why in (
        ({"channel": "sms", "target": "x"}, "channel"),
        ({"channel": "email", "target": "nobody"}, "e-mail"),
        ({"channel": "webhook", "target": "ftp://x"}, "http"),
        ({"channel": "email", "target": "a@b.c", "on": "anomaly_rate"}, "threshold"),
        ({"channel": "email", "target": "a@b.c", "on": "sometimes"}, "on must be"),
        ({"channel": "email", "target": "a@b.c", "extra": 1}, "unknown"),
    ):
        with pytest.raises(InvalidInput, match=why):
            validate_notify([bad])


def _resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> list[str]:
        return table[host]

    return resolve


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/data.csv", "scheme 'ftp'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("gopher://example.com/", "scheme"),
        ("http:///nohost", "no host"),
        ("http://user:pw@example.com/x.csv", "credentials"),
        ("http://127.0.0.1/x.csv", "loopback"),
        ("http://[::1]/x.csv", "::1"),
        ("http://10.1.2.3/x.csv", "10.1.2.3"),
        ("http://192.168.0.10:8080/x.csv", "192.168.0.10"),
        ("http://172.16.0.1/x.csv", "172.16.0.1"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://100.64.0.1/x.csv", "100.64.0.1"),
        ("http://0.0.0.0/x.csv", "0.0.0.0"),
        ("http://[::ffff:127.0.0.1]/x.csv", "127.0.0.1"),
        ("http://[fe80::1]/x.csv", "fe80::1"),
        ("http://224.0.0.1/x.csv", "224.0.0.1"),
        # A public name with one private answer among public ones: every address is checked.
        ("https://mixed.example.com/x.csv", "10.0.0.5"),
        ("http://redis.pynomaly.svc.cluster.local:6379/", "10.96.0.12"),
    ],
)
def test_dataset_urls_into_the_cluster_or_other_schemes_are_refused(url: str, why: str) -> None:
    resolve = _resolver(
        {"mixed.example.com": ["93.184.216.34", "10.0.0.5"], "redis.pynomaly.svc.cluster.local": ["10.96.0.12"]}
    )
    with pytest.raises(InvalidInput, match=why.replace(".", r"\.").replace("[", r"\[")):
        check_url(url, NO_LIST, resolve)


def test_public_urls_pass_and_the_allowlist_opens_listed_hosts_and_networks() -> None:
    resolve = _resolver({"data.example.com": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]})
    assert check_url("https://data.example.com/x.csv", NO_LIST, resolve)
    allow = UrlPolicy.parse("127.0.0.0/8, files.internal")
    assert check_url("http://127.0.0.1:9000/x.csv", allow)
    assert check_url("http://files.internal/x.csv", allow, _resolver({"files.internal": ["10.0.0.7"]}))
    with pytest.raises(InvalidInput):
        check_url("http://10.0.0.8/x.csv", allow)


def test_unresolvable_hosts_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="does not resolve"):
        check_url("http://does-not-exist.invalid/x.csv", NO_LIST)


def test_fetch_checks_every_redirect_hop_and_caps_the_size() -> None:
    allow = UrlPolicy.parse("127.0.0.0/8")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/redirect-inside":
            return httpx.Response(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        if request.url.path == "/big":
            return httpx.Response(200, content=b"x" * 5000)
        if request.url.path == "/big-chunked":  # no Content-Length: the cap applies while reading
            return httpx.Response(200, content=iter([b"x" * 1500, b"x" * 1500]))
        if request.url.path == "/missing":
            return httpx.Response(404)
        return httpx.Response(200, content=b"a,b\n1,2\n")

    transport = httpx.MockTransport(handler)

    def fetch(path: str, max_bytes: int = 2048) -> bytes:
        return fetch_dataset(f"http://127.0.0.1:9/{path}", allow, 5.0, max_bytes, transport=transport)

    assert fetch("ok.csv") == b"a,b\n1,2\n"
    with pytest.raises(InvalidInput, match=r"169\.254\.169\.254"):
        fetch("redirect-inside")
    with pytest.raises(InvalidInput, match="5000 bytes; the limit is 2048"):
        fetch("big")
    with pytest.raises(InvalidInput, match="exceeds the limit of 2048"):
        fetch("big-chunked")
    with pytest.raises(FetchFailed, match="HTTP 404"):
        fetch("missing")


def test_fetch_connects_to_the_checked_address_not_a_second_lookup() -> None:
    """The host below resolves only through the check's resolver: the system DNS cannot find it,
    so a fetch that looked the name up again (and could be rebound) would fail."""
    seen_hosts: list[str] = []

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            seen_hosts.append(self.headers.get("Host", ""))
            body = b"a,b\n1,2\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serving(Handler) as server:
        port = server.server_address[1]
        resolved: list[str] = []

        def resolver(host: str, _port: int) -> list[str]:
            resolved.append(host)
            return ["127.0.0.1"]

        url = f"http://pinned-data.invalid:{port}/x.csv"
        body = fetch_dataset(url, UrlPolicy.parse("127.0.0.0/8"), 5.0, 1024, resolve=resolver)
        assert body == b"a,b\n1,2\n"
        assert resolved == ["pinned-data.invalid"]
        assert seen_hosts == [f"pinned-data.invalid:{port}"]  # the server still sees the real name
