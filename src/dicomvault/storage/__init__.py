"""Object storage: one interface (`ObjectStore`), backends chosen by URL.

file:///var/lib/dicomvault/objects   LocalStore (the default, under data_dir)
s3://bucket/prefix                   S3Store (endpoint from settings for MinIO & co.),
                                     behind a CachedStore on local disk (storage/cache.py)
                                     unless `object_cache_bytes` is 0
memory://                            MemoryStore (tests, throw-away runs)

With a master key configured (a key file or AWS KMS), the store is wrapped in an
`EncryptedStore` (storage/crypto.py): see `keyring_from_settings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from dicomvault.config import Settings
from dicomvault.storage.aws import client_from_settings
from dicomvault.storage.base import (
    BlockDigests,
    ObjectInfo,
    ObjectStore,
    PutResult,
    new_key,
    read_range_verified,
    read_verified,
    verified,
    verified_range,
)
from dicomvault.storage.cache import CachedStore, durable, uncached
from dicomvault.storage.keys import FileMasterKey, KeyRing, KmsMasterKey, MasterKey
from dicomvault.storage.local import LocalStore
from dicomvault.storage.memory import MemoryStore

__all__ = [
    "BlockDigests",
    "CachedStore",
    "LocalStore",
    "MemoryStore",
    "ObjectInfo",
    "ObjectStore",
    "PutResult",
    "durable",
    "keyring_from_settings",
    "new_key",
    "open_store",
    "read_range_verified",
    "read_verified",
    "uncached",
    "verified",
    "verified_range",
]


def open_store(settings: Settings) -> ObjectStore:
    """The object store named by the settings' storage URL."""
    url = settings.effective_storage_url
    parts = urlsplit(url)
    if parts.scheme == "file":
        return LocalStore(Path(unquote(parts.path)))
    if parts.scheme == "memory":
        return MemoryStore()
    if parts.scheme == "s3":
        from dicomvault.storage.s3 import S3Store

        if not parts.netloc:
            raise ValueError(f"storage URL {url!r} names no bucket (s3://bucket/prefix)")
        secret = settings.s3_secret_access_key
        remote = S3Store(
            parts.netloc,
            parts.path,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            sse_kms_key_id=settings.s3_sse_kms_key_id,
        )
        if not settings.object_cache_bytes:
            return remote
        return CachedStore(
            remote,
            settings.data_dir / "object-cache",
            settings.object_cache_bytes,
            on_store=settings.object_cache_on_store,
        )
    raise ValueError(f"unsupported storage URL {url!r}: use file://, s3:// or memory://")


def keyring_from_settings(settings: Settings) -> KeyRing | None:
    """The master keys of encryption at rest, or None when it is not configured."""
    older: list[MasterKey] = [FileMasterKey.from_file(p) for p in settings.encryption_old_key_files]
    if settings.encryption_old_kms_key_ids or settings.encryption_kms_key_id:
        client = _kms_client(settings)
        older += [KmsMasterKey(k, client) for k in settings.encryption_old_kms_key_ids]
        if settings.encryption_kms_key_id:
            return KeyRing(KmsMasterKey(settings.encryption_kms_key_id, client), older)
    if settings.encryption_key_file is not None:
        return KeyRing(FileMasterKey.from_file(settings.encryption_key_file), older)
    if older:
        raise ValueError("old encryption keys are configured but no current one")
    return None


def _kms_client(settings: Settings) -> Any:
    return client_from_settings("kms", settings, endpoint_url=settings.kms_endpoint_url)
