"""API-key authentication: keys are compared as sha256 digests, never stored in plain form."""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

from pynomaly.api import API_KEY_HEADER
from pynomaly.config import hash_api_key


class ApiKeys:
    def __init__(self, hashes: frozenset[str]) -> None:
        self._hashes = hashes

    def __bool__(self) -> bool:
        return bool(self._hashes)

    def identify(self, key: str | None) -> str | None:
        """The caller's identity (a short key fingerprint) or None when the key is not accepted."""
        if not key:
            return None
        digest = hash_api_key(key)
        # Compare against every hash so timing does not reveal which prefix matched.
        matched = False
        for known in self._hashes:
            matched |= hmac.compare_digest(digest, known)
        return f"key:{digest[:12]}" if matched else None


def key_from_request(request: HTTPConnection) -> str | None:
    header = request.headers.get(API_KEY_HEADER)
    if header:
        return header
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return None
