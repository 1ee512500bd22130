"""Encryption at rest of payload blobs: the codec (AES-256-GCM, versioned header, key rotation) and
the settings that build it (keys from a file or a variable, every bad key a clear one-line error)."""

from __future__ import annotations

import base64
import gzip
import os
from pathlib import Path

import pytest

from pynomaly.config import Settings, SettingsError, settings_from_env
from pynomaly.storage.encryption import (
    HEADER_BYTES,
    MAGIC,
    PLAIN,
    BlobCodec,
    EncryptionKeyError,
    PayloadUnreadable,
    key_id,
    parse_keys,
)

K1, K2, K3 = (os.urandom(32) for _ in range(3))
NAME = "pynomaly:result:0123456789abcdef0123456789abcdef"
PAYLOAD = gzip.compress(b'{"columns":["patient_id"],"scores":[0.1,0.9]}')


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_round_trip_seals_with_a_header_and_hides_the_payload() -> None:
    codec = BlobCodec((K1,), enabled=True)
    sealed = codec.seal(NAME, PAYLOAD)
    assert sealed.startswith(MAGIC + key_id(K1))
    assert PAYLOAD not in sealed and b"patient_id" not in sealed
    # nonce + ciphertext + 16-byte tag; gzip's plain bytes never begin with the magic.
    assert len(sealed) == HEADER_BYTES + len(PAYLOAD) + 16
    assert codec.open(NAME, sealed) == PAYLOAD
    # A fresh nonce per blob: the same payload never seals to the same bytes.
    assert codec.seal(NAME, PAYLOAD) != sealed


def test_off_passes_blobs_through_and_plain_blobs_are_read_with_encryption_on() -> None:
    assert PLAIN.seal(NAME, PAYLOAD) == PAYLOAD
    assert PLAIN.open(NAME, PAYLOAD) == PAYLOAD
    # A blob stored before encryption was turned on (a rollout) is still read.
    assert BlobCodec((K1,), enabled=True).open(NAME, PAYLOAD) == PAYLOAD
    # Keys without `enabled`: writes stay plain, sealed blobs are read (turning encryption off).
    sealed = BlobCodec((K1,), enabled=True).seal(NAME, PAYLOAD)
    reader = BlobCodec((K1,), enabled=False)
    assert reader.seal(NAME, PAYLOAD) == PAYLOAD and reader.open(NAME, sealed) == PAYLOAD


def test_a_wrong_or_missing_key_is_a_clear_error() -> None:
    sealed = BlobCodec((K1,), enabled=True).seal(NAME, PAYLOAD)
    with pytest.raises(PayloadUnreadable, match=f"encrypted with key id {key_id(K1).hex()}, which is not among"):
        BlobCodec((K2,), enabled=True).open(NAME, sealed)
    with pytest.raises(PayloadUnreadable, match="encrypted at rest but no encryption key is configured") as exc:
        PLAIN.open(NAME, sealed)
    # A DomainError: the job step fails the job with this message, the API answers problem+json.
    assert NAME in str(exc.value) and exc.value.status == 500


@pytest.mark.parametrize(
    "offset",
    [len(MAGIC) + 8 + 3, HEADER_BYTES + 2, -1],  # the nonce, the ciphertext, the tag
    ids=["nonce", "ciphertext", "tag"],
)
def test_a_tampered_blob_is_refused(offset: int) -> None:
    codec = BlobCodec((K1,), enabled=True)
    sealed = bytearray(codec.seal(NAME, PAYLOAD))
    sealed[offset] ^= 0x01
    with pytest.raises(PayloadUnreadable, match="failed authentication"):
        codec.open(NAME, bytes(sealed))


def test_a_blob_moved_under_another_key_name_or_truncated_is_refused() -> None:
    codec = BlobCodec((K1,), enabled=True)
    sealed = codec.seal(NAME, PAYLOAD)
    other = NAME.replace("result", "report-json")
    with pytest.raises(PayloadUnreadable, match="failed authentication"):
        codec.open(other, sealed)
    with pytest.raises(PayloadUnreadable, match="truncated"):
        codec.open(NAME, sealed[: HEADER_BYTES + 4])


def test_rotation_seals_with_the_first_key_and_opens_with_the_old_ones() -> None:
    before = BlobCodec((K1,), enabled=True).seal(NAME, PAYLOAD)
    rotated = BlobCodec((K2, K1), enabled=True)
    after = rotated.seal(NAME, PAYLOAD)
    assert after.startswith(MAGIC + key_id(K2))
    assert rotated.open(NAME, before) == PAYLOAD and rotated.open(NAME, after) == PAYLOAD
    # Once the old key is dropped, what it sealed names the missing key id.
    with pytest.raises(PayloadUnreadable, match=key_id(K1).hex()):
        BlobCodec((K2, K3), enabled=True).open(NAME, before)
    assert rotated.key_ids() == [key_id(K2).hex(), key_id(K1).hex()]


def test_key_material_is_never_printed() -> None:
    codec = BlobCodec((K1, K2), enabled=True)
    assert repr(codec) == "BlobCodec(enabled=True, keys=2)"
    assert b64(K1) not in repr(codec) and K1.hex() not in repr(codec)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["not base64!"], "key 1 is not base64"),
        ([b64(os.urandom(16))], "key 1 is 16 bytes, AES-256 needs 32"),
        (["# current", b64(K1), "", b64(K1)], "the same key is listed twice"),
        ([b64(K1), b64(os.urandom(31))], "key 2 is 31 bytes"),
    ],
)
def test_malformed_keys_are_refused_with_their_position(lines: list[str], message: str) -> None:
    with pytest.raises(EncryptionKeyError, match=message) as exc:
        parse_keys(lines, "keys.txt")
    assert str(exc.value).startswith("keys.txt: ")


def test_enabled_without_a_key_cannot_be_built() -> None:
    with pytest.raises(EncryptionKeyError, match="no key is configured"):
        BlobCodec((), enabled=True)


# -- settings -------------------------------------------------------------------------------------


def test_off_by_default() -> None:
    codec = Settings().blob_codec()
    assert codec == PLAIN and not codec.enabled and codec.key_ids() == []


def test_keys_file_first_line_seals_and_comments_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "encryption-keys"
    path.write_text(f"# current key first\n{b64(K2)}\n\n{b64(K1)}\n")
    codec = settings_from_env(
        {"PYNOMALY_ENCRYPTION_ENABLED": "true", "PYNOMALY_ENCRYPTION_KEYS_FILE": str(path)}
    ).blob_codec()
    assert codec.enabled and codec.key_ids() == [key_id(K2).hex(), key_id(K1).hex()]
    assert codec.open(NAME, BlobCodec((K1,), enabled=True).seal(NAME, PAYLOAD)) == PAYLOAD


def test_keys_from_the_variable() -> None:
    settings = settings_from_env(
        {"PYNOMALY_ENCRYPTION_ENABLED": "1", "PYNOMALY_ENCRYPTION_KEYS": f"{b64(K1)}, {b64(K2)}"}
    )
    assert settings.blob_codec().key_ids() == [key_id(K1).hex(), key_id(K2).hex()]
    assert b64(K1) not in repr(settings) and b64(K1) not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PYNOMALY_ENCRYPTION_ENABLED": "true"}, "PYNOMALY_ENCRYPTION_ENABLED is true but no key is configured"),
        ({"PYNOMALY_ENCRYPTION_KEYS_FILE": "/nonexistent/keys"}, "cannot read /nonexistent/keys"),
        ({"PYNOMALY_ENCRYPTION_KEYS": "c2hvcnQ="}, "PYNOMALY_ENCRYPTION_KEYS: key 1 is 5 bytes"),
        ({"PYNOMALY_ENCRYPTION_ENABLED": "maybe"}, "PYNOMALY_ENCRYPTION_ENABLED: "),
    ],
)
def test_bad_encryption_settings_are_one_line_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as exc:
        settings_from_env(env).blob_codec()
    assert "\n" not in str(exc.value)


def test_a_bad_key_in_the_file_names_the_file_not_the_key(tmp_path: Path) -> None:
    secret_looking = b64(os.urandom(24))
    path = tmp_path / "keys"
    path.write_text(f"{b64(K1)}\n{secret_looking}\n")
    with pytest.raises(SettingsError) as exc:
        Settings(encryption_keys_file=str(path)).blob_codec()
    assert f"({path}): key 2 is 24 bytes" in str(exc.value) and secret_looking not in str(exc.value)
