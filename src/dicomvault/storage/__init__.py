"""Object storage: one interface (`ObjectStore`), backends chosen by URL.

file:///var/lib/dicomvault/objects   LocalStore (the default, under data_dir)
s3://bucket/prefix                   S3Store (endpoint from settings for MinIO & co.)
memory://                            MemoryStore (tests, throw-away runs)
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from dicomvault.config import Settings
from dicomvault.storage.base import (
    ObjectInfo,
    ObjectStore,
    PutResult,
    new_key,
    read_range_verified,
    read_verified,
    verified,
    verified_range,
)
from dicomvault.storage.local import LocalStore
from dicomvault.storage.memory import MemoryStore

__all__ = [
    "LocalStore",
    "MemoryStore",
    "ObjectInfo",
    "ObjectStore",
    "PutResult",
    "new_key",
    "open_store",
    "read_range_verified",
    "read_verified",
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
        return S3Store(
            parts.netloc,
            parts.path,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
        )
    raise ValueError(f"unsupported storage URL {url!r}: use file://, s3:// or memory://")
