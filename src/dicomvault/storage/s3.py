"""Objects in an S3-compatible bucket (AWS S3, MinIO, Ceph, ...) through obstore.

obstore streams uploads as multipart uploads in bounded chunks and downloads as a
chunked stream, so object size does not bound memory. `put` uses a conditional
create (If-None-Match) so a key is never overwritten.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import obstore
from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError
from obstore.store import S3Store as _ObstoreS3

from dicomvault.errors import ObjectNotFound, StorageError
from dicomvault.storage.base import CHUNK_SIZE, HashingReader, ObjectInfo, PutResult

__all__ = ["S3Store"]

_PART_SIZE = 8 * 1024 * 1024


class S3Store:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        sse_kms_key_id: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        config: dict[str, Any] = {"region": region}
        if endpoint_url:
            config["endpoint"] = endpoint_url
        if access_key_id:
            config["access_key_id"] = access_key_id
        if secret_access_key:
            config["secret_access_key"] = secret_access_key
        if sse_kms_key_id:  # SSE-KMS: S3 encrypts every object with this KMS key
            config["server_side_encryption"] = "aws:kms"
            config["sse_kms_key_id"] = sse_kms_key_id
        client_options = {"allow_http": bool(endpoint_url and endpoint_url.startswith("http:"))}
        self._store = _ObstoreS3(
            bucket,
            prefix=self.prefix or None,
            config=config,  # type: ignore[arg-type]  # S3Config is a TypedDict of these keys
            client_options=client_options,  # type: ignore[arg-type]
        )

    def put(self, key: str, chunks: Iterable[bytes]) -> PutResult:
        reader = HashingReader(chunks)
        try:
            obstore.put(self._store, key, iter(reader), mode="create", chunk_size=_PART_SIZE)
        except (AlreadyExistsError, PreconditionError) as exc:
            raise FileExistsError(key) from exc
        except Exception as exc:  # obstore raises its own tree; surface one error type
            raise StorageError(f"S3 put {key}: {exc}") from exc
        return reader.result(key)

    def iter_bytes(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        options: dict[str, Any] = {}
        if end is not None:
            if end <= start:
                return iter(())
            options["range"] = (start, end)
        elif start:
            options["range"] = {"offset": start}
        try:
            result = obstore.get(self._store, key, options=options)  # type: ignore[arg-type]
        except (NotFoundError, FileNotFoundError) as exc:
            raise ObjectNotFound(f"no object {key}") from exc
        except Exception as exc:
            if start and "416 Range Not Satisfiable" in str(exc):
                return iter(())  # a range past the end holds nothing, as on every store
            raise StorageError(f"S3 get {key}: {exc}") from exc
        return (bytes(chunk) for chunk in result.stream(min_chunk_size=CHUNK_SIZE))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        return b"".join(self.iter_bytes(key, start, start + length))

    def size(self, key: str) -> int:
        try:
            return int(obstore.head(self._store, key)["size"])
        except (NotFoundError, FileNotFoundError) as exc:
            raise ObjectNotFound(f"no object {key}") from exc

    def delete(self, key: str) -> None:
        try:
            obstore.delete(self._store, key)
        except (NotFoundError, FileNotFoundError):
            return

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for batch in obstore.list(self._store, prefix=prefix or None):
            for meta in batch:
                yield ObjectInfo(key=meta["path"], size=int(meta["size"]))
