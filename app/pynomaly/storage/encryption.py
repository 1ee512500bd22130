"""Encryption at rest of payload blobs in Redis: datasets (as submitted and prepared), results, reports
and stored datasets.  Job, schedule and dataset metadata documents stay plain JSON, so listing and
filtering work without keys (they hold no dataset cells, only names, counts and states).

A sealed blob is ``MAGIC | key id (8 bytes) | nonce (12 bytes) | AES-256-GCM ciphertext + tag``.
The Redis key name is authenticated too (GCM associated data), so a blob copied under another job's
key is refused like a tampered one.  Plain blobs never start with ``MAGIC``: the job store's blobs are
gzip (``1f 8b``) or a dataset whose first 4 bytes are a big-endian header length, and ``PNE\\x01``
would mean a 1.3 GB header, more than a Redis string holds.  So plain and sealed blobs coexist: a
rollout reads what was stored before it, and turning encryption off still reads what was sealed.

Keys are 32 random bytes, base64, one per line in a file (or comma-separated in a variable): the first
seals new blobs, the others only open old ones (rotation).  A key's id is derived from the key itself
(a truncated SHA-256 with a label), so operators never name keys and the id reveals nothing usable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pynomaly.domain.errors import DomainError

MAGIC = b"PNE\x01"  # "Pynomaly encrypted", format version 1
KEY_ID_BYTES = 8
NONCE_BYTES = 12  # random per blob: 2**-32 collision odds only after ~2**32 blobs under one key
KEY_BYTES = 32  # AES-256
HEADER_BYTES = len(MAGIC) + KEY_ID_BYTES + NONCE_BYTES
KEYS_HELP = "one base64 key of 32 random bytes per line, e.g. from `openssl rand -base64 32`"


class EncryptionKeyError(ValueError):
    """A configured key is malformed; the message says which one (never its value) and what to do."""


class PayloadUnreadable(DomainError):
    """A stored blob cannot be opened: its key is not configured, or it failed authentication.

    A DomainError, so a job step that meets it fails the job with this message (retrying cannot bring a
    key back) and the API answers problem+json instead of a traceback."""

    status = 500
    title = "Stored payload unreadable"


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"pynomaly-blob-key-id\x00" + key).digest()[:KEY_ID_BYTES]


def parse_keys(lines: Iterable[str], source: str) -> list[bytes]:
    """Decode base64 keys (blank lines and ``#`` comments skipped); each must be exactly 32 bytes."""
    keys: list[bytes] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            key = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise EncryptionKeyError(f"{source}: key {number} is not base64 ({KEYS_HELP})") from None
        if len(key) != KEY_BYTES:
            raise EncryptionKeyError(
                f"{source}: key {number} is {len(key)} bytes, AES-256 needs {KEY_BYTES} ({KEYS_HELP})"
            )
        keys.append(key)
    ids = [key_id(k) for k in keys]
    if len(set(ids)) != len(ids):
        raise EncryptionKeyError(f"{source}: the same key is listed twice")
    return keys


@dataclass(frozen=True)
class BlobCodec:
    """Seals blobs with the first key when ``enabled``; opens sealed blobs with any configured key.

    The default (no keys, not enabled) passes blobs through and refuses sealed ones with a clear error.
    """

    keys: tuple[bytes, ...] = ()
    enabled: bool = False
    _by_id: dict[bytes, AESGCM] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.enabled and not self.keys:
            raise EncryptionKeyError("encryption is enabled but no key is configured")
        object.__setattr__(self, "_by_id", {key_id(k): AESGCM(k) for k in self.keys})

    def __repr__(self) -> str:  # never print key material
        return f"BlobCodec(enabled={self.enabled}, keys={len(self.keys)})"

    def seal(self, name: str, plain: bytes) -> bytes:
        """What to store under the Redis key ``name``: ``plain`` itself when encryption is off."""
        if not self.enabled:
            return plain
        current = key_id(self.keys[0])
        nonce = os.urandom(NONCE_BYTES)
        header = MAGIC + current + nonce
        return header + self._by_id[current].encrypt(nonce, plain, MAGIC + current + name.encode())

    def open(self, name: str, stored: bytes) -> bytes:
        """The plain bytes of what was stored under ``name`` (sealed or not)."""
        if not stored.startswith(MAGIC):
            return stored
        if len(stored) < HEADER_BYTES + 16:
            raise PayloadUnreadable(f"{name} is encrypted but truncated ({len(stored)} bytes)")
        kid = stored[len(MAGIC) : len(MAGIC) + KEY_ID_BYTES]
        nonce = stored[len(MAGIC) + KEY_ID_BYTES : HEADER_BYTES]
        aead = self._by_id.get(kid)
        if aead is None:
            if not self._by_id:
                raise PayloadUnreadable(
                    f"{name} is encrypted at rest but no encryption key is configured "
                    "(PYNOMALY_ENCRYPTION_KEYS_FILE or PYNOMALY_ENCRYPTION_KEYS)"
                )
            raise PayloadUnreadable(
                f"{name} is encrypted with key id {kid.hex()}, which is not among the configured keys "
                f"({', '.join(k.hex() for k in self._by_id)}): add that key back as an old key"
            )
        try:
            return aead.decrypt(nonce, stored[HEADER_BYTES:], MAGIC + kid + name.encode())
        except InvalidTag:
            raise PayloadUnreadable(
                f"{name} failed authentication: it was altered, or stored under another name"
            ) from None

    def key_ids(self) -> list[str]:
        """Hex ids of the configured keys, the sealing one first (safe to log)."""
        return [key_id(k).hex() for k in self.keys]


PLAIN = BlobCodec()
