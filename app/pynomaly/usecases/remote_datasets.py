"""Outbound URLs (schedules' dataset URLs, webhook notification targets): one policy against
server-side request forgery, and requests that connect only where the policy allows.

A URL must be http(s) and every address its host resolves to must be public: loopback, private,
link-local (cloud metadata at 169.254.169.254), shared, multicast, reserved and unspecified
addresses (IPv6 ones and IPv4-mapped IPv6 too) are refused, unless the host or address is in the
policy's allowlist (``dataset_url_allowlist`` for dataset URLs, ``webhook_url_allowlist`` for
webhooks).  The check runs when the schedule, job or rule is submitted and again before every
request (and on every redirect hop), since DNS answers change.  Redirects are followed by hand, at
most ``MAX_REDIRECTS``, each one checked.

A request connects to the very address that passed the check (the URL's host is replaced by it;
the Host header and, for https, the TLS server name and certificate check keep the real name), so
a DNS answer that changes between check and connect (rebinding) cannot steer it elsewhere.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import SplitResult, urljoin, urlsplit

import httpx

from pynomaly.domain.errors import InvalidInput

ALLOWED_SCHEMES = ("http", "https")
MAX_REDIRECTS = 3
MAX_URL_LENGTH = 2048
DATASET_ALLOWLIST = "PYNOMALY_DATASET_URL_ALLOWLIST"
WEBHOOK_ALLOWLIST = "PYNOMALY_WEBHOOK_URL_ALLOWLIST"
# Redirects that keep the method and body (RFC 9110): the only ones a webhook POST follows.
BODY_KEEPING_REDIRECTS = frozenset({307, 308})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


class FetchFailed(RuntimeError):
    """The URL passed the checks but the fetch failed (network, status, size); worth retrying later."""


@dataclass(frozen=True)
class UrlPolicy:
    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    setting: str = DATASET_ALLOWLIST  # named in refusals: where to open a host on purpose

    @classmethod
    def parse(cls, allowlist: str, setting: str = DATASET_ALLOWLIST) -> UrlPolicy:
        hosts: set[str] = set()
        networks = []
        for item in (part.strip() for part in allowlist.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks), setting)

    def allows(self, host: str, address: IPAddress) -> bool:
        if host.lower().rstrip(".") in self.allowed_hosts:
            return True
        return any(address in net for net in self.allowed_networks if net.version == address.version)


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return is_public(address.ipv4_mapped)
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv4Address) and address in ipaddress.ip_network("100.64.0.0/10"))
        or not address.is_global
    )


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidInput(f"host {host!r} does not resolve: {exc}") from None
    return sorted({str(info[4][0]) for info in infos})


def check_url(url: str, policy: UrlPolicy, resolve: Resolver = system_resolver, field: str = "dataset_url") -> str:
    """Return ``url`` if it may be requested; raise :class:`InvalidInput` (naming ``field``) saying why not."""
    _checked(url, policy, resolve, field)
    return url


@dataclass(frozen=True)
class PinnedRequest:
    """Where to connect (a checked address) and which name the server must see."""

    url: str
    host_header: str
    server_name: str | None  # TLS SNI and certificate name; None for plain http


def pin(url: str, policy: UrlPolicy, resolve: Resolver = system_resolver, field: str = "dataset_url") -> PinnedRequest:
    parts, host, address = _checked(url, policy, resolve, field)
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    host_header = parts.netloc.rsplit("@", 1)[-1]
    is_tls = parts.scheme.lower() == "https"
    return PinnedRequest(parts._replace(netloc=netloc).geturl(), host_header, host if is_tls else None)


def _checked(url: str, policy: UrlPolicy, resolve: Resolver, field: str) -> tuple[SplitResult, str, IPAddress]:
    """The URL's parts, host and the first of its addresses, after every address passed the policy."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"{field} must be an http(s) URL of at most {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise InvalidInput(f"{field} scheme {parts.scheme or '(none)'!r} is not allowed; use http or https")
    if parts.username or parts.password:
        raise InvalidInput(f"{field} must not carry credentials")
    host = parts.hostname
    if not host:
        raise InvalidInput(f"{field} has no host")
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise InvalidInput(f"{field} has an invalid port") from None
    try:
        addresses = _addresses(host, port, resolve)
    except InvalidInput as exc:
        raise InvalidInput(f"{field} {exc}") from None
    if not addresses:
        raise InvalidInput(f"{field} host {host!r} does not resolve")
    for address in addresses:
        if not is_public(address) and not policy.allows(host, address):
            raise InvalidInput(
                f"{field} host {host!r} resolves to {address}, a private, loopback, link-local or reserved "
                f"address: not allowed (see {policy.setting})"
            )
    return parts, host, addresses[0]


def _addresses(host: str, port: int, resolve: Resolver) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    return [ipaddress.ip_address(a.split("%")[0]) for a in resolve(host, port)]


@contextlib.contextmanager
def checked_request(
    client: httpx.Client,
    method: str,
    url: str,
    policy: UrlPolicy,
    *,
    field: str,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
    resolve: Resolver = system_resolver,
    follow: Callable[[httpx.Response], bool] = lambda response: True,
) -> Iterator[tuple[str, httpx.Response]]:
    """Send ``method`` to ``url`` pinned to its checked address; yields (final URL, streamed response).

    Redirects the ``follow`` predicate accepts are followed by hand, each hop checked against the
    policy (:class:`InvalidInput` when one is refused); others are yielded as they came.  ``client``
    must not follow redirects itself.
    """
    for _hop in range(MAX_REDIRECTS + 1):
        target = pin(url, policy, resolve, field)
        extensions = {"sni_hostname": target.server_name} if target.server_name else {}
        sent = {**(headers or {}), "Host": target.host_header}
        with client.stream(method, target.url, headers=sent, content=content, extensions=extensions) as response:
            location = response.headers.get("location")
            if response.is_redirect and location and follow(response):
                url = urljoin(url, location)
                continue
            yield url, response
            return
    raise FetchFailed(f"more than {MAX_REDIRECTS} redirects")


def fetch_dataset(
    url: str,
    policy: UrlPolicy,
    timeout: float,
    max_bytes: int,
    resolve: Resolver = system_resolver,
    transport: httpx.BaseTransport | None = None,
) -> bytes:
    """GET ``url`` (checked at every hop), at most ``max_bytes`` of body within ``timeout`` seconds."""
    headers = {"Accept": "text/csv, */*;q=0.5"}
    with httpx.Client(timeout=timeout, follow_redirects=False, transport=transport, trust_env=False) as client:
        try:
            with checked_request(client, "GET", url, policy, field="dataset_url", headers=headers, resolve=resolve) as (
                final,
                response,
            ):
                if response.is_redirect:
                    raise FetchFailed(f"{final}: redirect without a Location")
                if response.status_code >= 400:
                    raise FetchFailed(f"{final}: HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise InvalidInput(f"dataset at {final} is {declared} bytes; the limit is {max_bytes}")
                return _read_capped(response.iter_bytes(), max_bytes, final)
        except httpx.HTTPError as exc:
            raise FetchFailed(f"{url}: {type(exc).__name__}: {exc}") from exc


def _read_capped(chunks: Iterable[bytes], max_bytes: int, url: str) -> bytes:
    body = bytearray()
    for chunk in chunks:
        body.extend(chunk)
        if len(body) > max_bytes:
            raise InvalidInput(f"dataset at {url} exceeds the limit of {max_bytes} bytes")
    return bytes(body)
