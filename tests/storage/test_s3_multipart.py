"""The S3 store in bounded memory: a large object goes up part by part (a multipart
upload made conditional at its completion), and a failed or refused upload leaves no
multipart upload behind."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator

import boto3
import pytest

from dicomvault.errors import StorageError
from dicomvault.storage import new_key
from dicomvault.storage.s3 import S3Store
from tests.support.s3 import S3_KEY, S3_SECRET, new_bucket

MIB = 1024 * 1024


@pytest.fixture
def bucket(s3_endpoint: str) -> tuple[str, str]:
    return s3_endpoint, new_bucket(s3_endpoint, "mp")


def _store(bucket: tuple[str, str]) -> S3Store:
    endpoint, name = bucket
    return S3Store(
        name, "p", endpoint_url=endpoint, access_key_id=S3_KEY, secret_access_key=S3_SECRET
    )


def _uploads(bucket: tuple[str, str]) -> list[object]:
    endpoint, name = bucket
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET)  # fmt: skip
    return list(s3.list_multipart_uploads(Bucket=name).get("Uploads", []))


_PUT_IN_A_PROCESS = """
import resource, sys
from dicomvault.errors import StorageError
from dicomvault.storage import new_key
from dicomvault.storage.s3 import S3Store
endpoint, bucket, key_id, secret, mib = sys.argv[1:6]
store = S3Store(bucket, "p", endpoint_url=endpoint, access_key_id=key_id, secret_access_key=secret)
block = bytes(range(256)) * 4096
# A new bytes object per chunk, as a file or a socket gives: a store that keeps the
# chunks until the end holds the whole object.
result = store.put(new_key(), (bytes(bytearray(block)) for _ in range(int(mib))))
assert result.size == int(mib) * len(block)
# VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec.
print(int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) // 1024)
"""


def test_a_300_mib_put_holds_a_few_parts_in_memory(bucket: tuple[str, str]) -> None:
    # In a process of its own: the S3 endpoint of the tests keeps its objects in this one.
    endpoint, name = bucket
    done = subprocess.run(
        [sys.executable, "-c", _PUT_IN_A_PROCESS, endpoint, name, S3_KEY, S3_SECRET, "300"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    peak_mib = int(done.stdout.split()[-1])
    # Parts are 8 MiB; buffering the whole object would put the peak above 300 MiB.
    assert peak_mib < 200, f"peak RSS {peak_mib} MiB"
    assert _uploads(bucket) == []


def test_refused_and_failed_uploads_are_aborted(bucket: tuple[str, str]) -> None:
    store = _store(bucket)
    key = new_key()
    data = secrets.token_bytes(20 * MIB)
    store.put(key, [data])
    with pytest.raises(FileExistsError):
        store.put(key, [data])

    def failing() -> Iterator[bytes]:
        yield secrets.token_bytes(17 * MIB)
        raise OSError("the client went away")

    with pytest.raises((OSError, StorageError), match="went away"):
        store.put(new_key(), failing())
    assert _uploads(bucket) == []
    assert b"".join(store.iter_bytes(key)) == data
