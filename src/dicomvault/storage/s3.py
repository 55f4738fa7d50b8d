"""Objects in an S3-compatible bucket (AWS S3, MinIO, Ceph, ...).

Objects are immutable: `put` never overwrites a key, and memory stays bounded
whatever the object's size:

- an object that fits in one part (8 MiB) is one conditional PUT (`If-None-Match: *`,
  through obstore);
- a larger one is a multipart upload, part by part, made conditional at its
  completion (`If-None-Match: *` on CompleteMultipartUpload, through boto3: obstore's
  conditional create buffers the whole object in memory first). Any failure, a key
  that exists included, aborts the upload so no parts are left behind.

Several objects at once (`put_many`, the parts of one STOW-RS request) are put up to
`_PUTS_AT_ONCE` at a time on the store's own threads: each PUT mostly waits on the
network, and obstore waits without the GIL.

Reads stream through obstore in chunks.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import obstore
from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError
from obstore.store import S3Store as _ObstoreS3

from dicomvault.errors import ObjectNotFound, StorageError
from dicomvault.storage import aws
from dicomvault.storage.base import CHUNK_SIZE, HashingReader, ObjectInfo, PutResult, put_each

__all__ = ["S3Store"]

_PART_SIZE = 8 * 1024 * 1024  # S3's minimum part is 5 MiB (all but the last)
_IN_FLIGHT = 3  # parts uploaded at once: bandwidth on real S3, bounded memory
_PUTS_AT_ONCE = 8  # objects of one `put_many` uploaded at once


def _parts(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """`chunks` regrouped into pieces of `size` bytes (the last one shorter)."""
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)


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
        self._sse_kms_key_id = sse_kms_key_id
        self._connection: dict[str, Any] = {
            "region": region,
            "endpoint_url": endpoint_url,
            "access_key_id": access_key_id,
            "secret_access_key": secret_access_key,
        }
        self._s3: Any = None  # boto3 client for multipart uploads, made on first use
        self._pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool) of put_many
        self._pool_lock = threading.Lock()
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
        parts = _parts(iter(reader), _PART_SIZE)
        first = next(parts, b"")
        second = next(parts, None)
        if second is None:
            try:
                obstore.put(self._store, key, first, mode="create")
            except (AlreadyExistsError, PreconditionError) as exc:
                raise FileExistsError(key) from exc
            except Exception as exc:  # obstore raises its own tree; surface one error type
                raise StorageError(f"S3 put {key}: {exc}") from exc
        else:
            self._multipart(key, itertools.chain((first, second), parts))
        return reader.result(key)

    def put_many(self, items: Sequence[tuple[str, Iterable[bytes]]]) -> list[PutResult | Exception]:
        if len(items) < 2:
            return put_each(self, items)
        pool = self._puts()

        def put(item: tuple[str, Iterable[bytes]]) -> PutResult | Exception:
            try:
                return self.put(*item)
            except Exception as exc:  # noqa: BLE001 - one object's failure is its own entry
                return exc

        return list(pool.map(put, items))

    def _puts(self) -> ThreadPoolExecutor:
        """The threads of `put_many`, made on first use in each process (a forked child
        has none of its parent's threads)."""
        with self._pool_lock:
            if self._pool is None or self._pool[0] != os.getpid():
                pool = ThreadPoolExecutor(_PUTS_AT_ONCE, thread_name_prefix="s3-put")
                self._pool = (os.getpid(), pool)
            return self._pool[1]

    def _multipart(self, key: str, parts: Iterator[bytes]) -> None:
        """Upload `parts` as one object, created only if `key` does not exist."""
        from botocore.exceptions import ClientError

        s3 = self._boto()
        name = f"{self.prefix}/{key}" if self.prefix else key
        extra: dict[str, Any] = {}
        if self._sse_kms_key_id:
            extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self._sse_kms_key_id}
        try:
            upload = s3.create_multipart_upload(Bucket=self.bucket, Key=name, **extra)["UploadId"]
        except ClientError as exc:
            raise StorageError(f"S3 put {key}: {exc}") from exc
        try:
            done = self._upload_parts(s3, name, upload, parts)
            s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=name,
                UploadId=upload,
                MultipartUpload={"Parts": done},
                IfNoneMatch="*",
            )
        except BaseException as exc:
            with contextlib.suppress(Exception):
                s3.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload)
            if isinstance(exc, ClientError):
                code = exc.response.get("Error", {}).get("Code", "")
                if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                    raise FileExistsError(key) from exc
                raise StorageError(f"S3 put {key}: {exc}") from exc
            raise

    def _upload_parts(
        self, s3: Any, name: str, upload: str, parts: Iterator[bytes]
    ) -> list[dict[str, Any]]:
        """Upload `parts` with up to `_IN_FLIGHT` at once (memory: that many parts)."""
        done: list[dict[str, Any]] = []
        with ThreadPoolExecutor(_IN_FLIGHT, thread_name_prefix="s3-part") as pool:
            pending: deque[tuple[int, Future[Any]]] = deque()
            for number, body in enumerate(parts, start=1):
                if len(pending) == _IN_FLIGHT:
                    first, future = pending.popleft()
                    done.append({"PartNumber": first, "ETag": future.result()["ETag"]})
                pending.append((number, pool.submit(
                    s3.upload_part, Bucket=self.bucket, Key=name, UploadId=upload,
                    PartNumber=number, Body=body,
                )))  # fmt: skip
            for number, future in pending:
                done.append({"PartNumber": number, "ETag": future.result()["ETag"]})
        return done

    def _boto(self) -> Any:
        if self._s3 is None:
            self._s3 = aws.client("s3", **self._connection)
        return self._s3

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
