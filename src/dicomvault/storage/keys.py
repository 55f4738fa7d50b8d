"""Master keys that wrap the per-object data keys of encrypted storage.

A key file holds 32 random bytes (raw, hex or base64); its key id is derived from the
key, so the id names the key without revealing it. An AWS KMS key wraps through
KMS `Encrypt`/`Decrypt` (the data key never leaves memory unwrapped; the master key
never leaves KMS). A `KeyRing` wraps with the current key and unwraps with any key it
holds, which is what rotation needs: old keys stay readable until every data key has
been re-wrapped under the new one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dicomvault.errors import StorageError

__all__ = ["FileMasterKey", "KeyRing", "KmsMasterKey", "MasterKey", "MissingKey", "read_key_file"]

_KMS_CONTEXT = {"purpose": "dicomvault-data-key"}


class MissingKey(StorageError):
    """A data key is wrapped by a master key this server does not have."""


class MasterKey(Protocol):
    key_id: str

    def wrap(self, data_key: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes) -> bytes: ...


def read_key_file(path: Path) -> bytes:
    """32 bytes from a key file written as raw bytes, 64 hex digits or base64."""
    raw = path.read_bytes()
    if len(raw) == 32:
        return raw
    text = raw.strip()
    try:
        key = bytes.fromhex(text.decode()) if len(text) == 64 else base64.b64decode(text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        key = b""
    if len(key) != 32:
        raise ValueError(f"{path}: a key file holds 32 bytes (raw, 64 hex digits or base64)")
    return key


def new_key_file(path: Path) -> None:
    """Write a fresh random master key (hex), readable by the owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(os.urandom(32).hex() + "\n")


class FileMasterKey:
    def __init__(self, key: bytes) -> None:
        self._aes = AESGCM(key)
        self.key_id = "file:" + hashlib.sha256(b"dicomvault key id\0" + key).hexdigest()[:24]

    @classmethod
    def from_file(cls, path: Path) -> FileMasterKey:
        return cls(read_key_file(path))

    def wrap(self, data_key: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aes.encrypt(nonce, data_key, self.key_id.encode())

    def unwrap(self, wrapped: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        try:
            return self._aes.decrypt(wrapped[:12], wrapped[12:], self.key_id.encode())
        except InvalidTag as exc:
            raise MissingKey(f"data key does not unwrap with {self.key_id}") from exc


class KmsMasterKey:
    """A KMS key; `client` is a boto3 KMS client."""

    def __init__(self, kms_key_id: str, client: Any) -> None:
        self.kms_key_id = kms_key_id
        self.key_id = f"kms:{kms_key_id}"
        self._client = client

    def wrap(self, data_key: bytes) -> bytes:
        try:
            answer = self._client.encrypt(
                KeyId=self.kms_key_id, Plaintext=data_key, EncryptionContext=_KMS_CONTEXT
            )
        except Exception as exc:  # botocore's error tree: surface one storage error
            raise StorageError(f"KMS encrypt with {self.kms_key_id}: {exc}") from exc
        return bytes(answer["CiphertextBlob"])

    def unwrap(self, wrapped: bytes) -> bytes:
        try:
            answer = self._client.decrypt(
                CiphertextBlob=wrapped, KeyId=self.kms_key_id, EncryptionContext=_KMS_CONTEXT
            )
        except Exception as exc:
            raise MissingKey(f"KMS decrypt with {self.kms_key_id}: {exc}") from exc
        return bytes(answer["Plaintext"])


class KeyRing:
    """The current master key (wraps new data keys) and older ones (unwrap only)."""

    def __init__(self, current: MasterKey, older: list[MasterKey] | None = None) -> None:
        self.current = current
        self._keys = {key.key_id: key for key in [*(older or []), current]}

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        return self.current.key_id, self.current.wrap(data_key)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        key = self._keys.get(key_id)
        if key is None:
            raise MissingKey(
                f"data key wrapped by {key_id}, which this server does not have "
                "(add it to encryption_old_key_files)"
            )
        return key.unwrap(wrapped)
