"""Dataset URLs of schedules: checked against server-side request forgery, fetched with limits.

A URL must be http(s) and every address its host resolves to must be public: loopback, private,
link-local (cloud metadata at 169.254.169.254), shared, multicast, reserved and unspecified
addresses are refused, unless the host or address is in ``dataset_url_allowlist``.  The check runs
when the schedule is created and again before every fetch (and on every redirect hop), since DNS
answers change.  Redirects are followed by hand, at most ``MAX_REDIRECTS``, each one checked.

The fetch connects to the very address that passed the check (the URL's host is replaced by it;
the Host header and, for https, the TLS server name and certificate check keep the real name), so
a DNS answer that changes between check and connect (rebinding) cannot steer it elsewhere.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urljoin, urlsplit

import httpx

from pynomaly.domain.errors import InvalidInput

ALLOWED_SCHEMES = ("http", "https")
MAX_REDIRECTS = 3
MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


class FetchFailed(RuntimeError):
    """The URL passed the checks but the fetch failed (network, status, size); worth retrying later."""


@dataclass(frozen=True)
class UrlPolicy:
    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, allowlist: str) -> UrlPolicy:
        hosts: set[str] = set()
        networks = []
        for item in (part.strip() for part in allowlist.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

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
        raise InvalidInput(f"dataset_url host {host!r} does not resolve: {exc}") from None
    return sorted({info[4][0] for info in infos})


def check_url(url: str, policy: UrlPolicy, resolve: Resolver = system_resolver) -> str:
    """Return ``url`` if it may be fetched; raise :class:`InvalidInput` saying why not."""
    _checked(url, policy, resolve)
    return url


@dataclass(frozen=True)
class PinnedRequest:
    """Where to connect (a checked address) and which name the server must see."""

    url: str
    host_header: str
    server_name: str | None  # TLS SNI and certificate name; None for plain http


def pin(url: str, policy: UrlPolicy, resolve: Resolver = system_resolver) -> PinnedRequest:
    parts, host, address = _checked(url, policy, resolve)
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    host_header = parts.netloc.rsplit("@", 1)[-1]
    is_tls = parts.scheme.lower() == "https"
    return PinnedRequest(parts._replace(netloc=netloc).geturl(), host_header, host if is_tls else None)


def _checked(url: str, policy: UrlPolicy, resolve: Resolver) -> tuple[SplitResult, str, IPAddress]:
    """The URL's parts, host and the first of its addresses, after every address passed the policy."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"dataset_url must be an http(s) URL of at most {MAX_URL_LENGTH} characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise InvalidInput(f"dataset_url scheme {parts.scheme or '(none)'!r} is not allowed; use http or https")
    if parts.username or parts.password:
        raise InvalidInput("dataset_url must not carry credentials")
    host = parts.hostname
    if not host:
        raise InvalidInput("dataset_url has no host")
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise InvalidInput("dataset_url has an invalid port") from None
    addresses = _addresses(host, port, resolve)
    if not addresses:
        raise InvalidInput(f"dataset_url host {host!r} does not resolve")
    for address in addresses:
        if not is_public(address) and not policy.allows(host, address):
            raise InvalidInput(
                f"dataset_url host {host!r} resolves to {address}, a private, loopback, link-local or reserved "
                "address: not allowed (see PYNOMALY_DATASET_URL_ALLOWLIST)"
            )
    return parts, host, addresses[0]


def _addresses(host: str, port: int, resolve: Resolver) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    return [ipaddress.ip_address(a.split("%")[0]) for a in resolve(host, port)]


def fetch_dataset(
    url: str,
    policy: UrlPolicy,
    timeout: float,
    max_bytes: int,
    resolve: Resolver = system_resolver,
    transport: httpx.BaseTransport | None = None,
) -> bytes:
    """GET ``url`` (checked at every hop), at most ``max_bytes`` of body within ``timeout`` seconds."""
    with httpx.Client(timeout=timeout, follow_redirects=False, transport=transport, trust_env=False) as client:
        for _hop in range(MAX_REDIRECTS + 1):
            target = pin(url, policy, resolve)
            extensions = {"sni_hostname": target.server_name} if target.server_name else {}
            headers = {"Accept": "text/csv, */*;q=0.5", "Host": target.host_header}
            try:
                with client.stream("GET", target.url, headers=headers, extensions=extensions) as response:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise FetchFailed(f"{url}: redirect without a Location")
                        url = urljoin(url, location)
                        continue
                    if response.status_code >= 400:
                        raise FetchFailed(f"{url}: HTTP {response.status_code}")
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > max_bytes:
                        raise InvalidInput(f"dataset at {url} is {declared} bytes; the limit is {max_bytes}")
                    return _read_capped(response.iter_bytes(), max_bytes, url)
            except httpx.HTTPError as exc:
                raise FetchFailed(f"{url}: {type(exc).__name__}: {exc}") from exc
        raise FetchFailed(f"more than {MAX_REDIRECTS} redirects")


def _read_capped(chunks: Iterable[bytes], max_bytes: int, url: str) -> bytes:
    body = bytearray()
    for chunk in chunks:
        body.extend(chunk)
        if len(body) > max_bytes:
            raise InvalidInput(f"dataset at {url} exceeds the limit of {max_bytes} bytes")
    return bytes(body)
