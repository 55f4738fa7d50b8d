"""Encryption at rest, end to end on both backend pairs: no plaintext in the store,
everything still served (whole, ranged frames), a flipped byte and a missing object
found by `dicomvault verify`, rotation with `dicomvault keys rotate`, AWS KMS (moto),
and S3 SSE-KMS as the alternative."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from dicomvault.archive import Archive
from dicomvault.config import Settings
from dicomvault.index.schema import objects
from dicomvault.storage import CachedStore, LocalStore, ObjectStore, durable
from dicomvault.storage.crypto import EncryptedStore
from dicomvault.storage.keys import new_key_file
from dicomvault.storage.s3 import S3Store
from dicomvault.synthetic import study_instances, uid
from tests.support.cli import command_env, dicomvault
from tests.support.dicom_files import STOW_TYPE, multipart
from tests.support.live import running_server
from tests.support.s3 import S3_KEY, S3_SECRET, new_bucket

SECRET_NAME = b"Confidential^Patient"
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _s3(settings: Settings, service: str = "s3") -> Any:
    secret = settings.s3_secret_access_key
    return boto3.client(
        service,
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
    )


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
    )


def _durable(archive: Archive) -> ObjectStore:
    """The store the archive's objects are kept in: beneath encryption and any cache."""
    return durable(archive.store)


def raw_objects(archive: Archive) -> dict[str, bytes]:
    """Every object as it lies in the bucket or on disk, read past the archive."""
    store = _durable(archive)
    if isinstance(store, LocalStore):
        return {
            str(p.relative_to(store.root)): p.read_bytes()
            for p in store.root.rglob("*")
            if p.is_file()
        }
    assert isinstance(store, S3Store)
    client = _s3(archive.settings)
    listed = client.list_objects_v2(Bucket=store.bucket).get("Contents", [])
    return {
        item["Key"]: client.get_object(Bucket=store.bucket, Key=item["Key"])["Body"].read()
        for item in listed
    }


def overwrite_raw(archive: Archive, key: str, data: bytes | None) -> None:
    """Change (or with None, delete) one stored object behind the archive's back, and drop
    its local cached copy (as if the archive had not read it since it started)."""
    store = _durable(archive)
    cache = archive.store.plain if isinstance(archive.store, EncryptedStore) else archive.store
    if isinstance(cache, CachedStore):
        cache.drop(key)
    if isinstance(store, LocalStore):
        path = store.root / key
        if data is None:
            path.unlink()
        else:
            path.write_bytes(data)
        return
    assert isinstance(store, S3Store)
    full = f"{store.prefix}/{key}" if store.prefix else key
    if data is None:
        _s3(archive.settings).delete_object(Bucket=store.bucket, Key=full)
    else:
        _s3(archive.settings).put_object(Bucket=store.bucket, Key=full, Body=data)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "master.key"
    new_key_file(path)
    return path


@pytest.fixture
def encrypted(settings: Settings, key_file: Path) -> Iterator[Archive]:
    archive = Archive.open(settings.model_copy(update={"encryption_key_file": key_file}))
    try:
        yield archive
    finally:
        archive.close()


def _stow(url: str, datas: list[bytes]) -> None:
    response = httpx.post(
        f"{url}/dicom-web/studies",
        headers={"Content-Type": STOW_TYPE},
        content=multipart(*(("application/dicom", d) for d in datas)),
        timeout=60,
    )
    assert response.status_code == 200, response.text


def _originals() -> list[bytes]:
    return list(
        study_instances(
            "secret", series=1, per_series=3, size=300, patient_name=SECRET_NAME.decode()
        )
    )


def _keys(archive: Archive) -> dict[str, str]:
    with archive.db.read() as conn:
        return dict(conn.execute(select(objects.c.sop_uid, objects.c.key)).all())


def test_the_store_holds_no_plaintext_and_serves_everything(encrypted: Archive) -> None:
    originals = _originals()
    with running_server(encrypted) as url:
        _stow(url, originals)
        raw = raw_objects(encrypted)
        assert len(raw) == 3
        for key, data in raw.items():
            assert b"DICM" not in data, key
            assert SECRET_NAME not in data, key
        study = uid("secret/study")
        series = uid("secret/series/0")
        sop = uid("secret/series/0/instance/1")
        whole = httpx.get(
            f"{url}/dicom-web/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": AS_STORED},
        )
        assert whole.status_code == 200
        assert originals[1][132:] in whole.content  # served as stored (preamble zeroed)
        frame = httpx.get(
            f"{url}/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/1",
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        )
        assert frame.status_code == 200
        assert len(frame.content) > 300 * 300 * 2  # the whole frame, by a ranged read


def test_verify_finds_a_flipped_byte_and_a_missing_object(encrypted: Archive) -> None:
    for data in _originals():
        encrypted.ingestor.ingest(BytesIO(data))
    env = command_env(encrypted.settings)
    ok = dicomvault("verify", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "checked 3 objects" in ok.stdout

    keys = _keys(encrypted)
    flipped = keys[uid("secret/series/0/instance/0")]
    gone = keys[uid("secret/series/0/instance/2")]
    raw = bytearray(raw_objects(encrypted)[_raw_name(encrypted, flipped)])
    raw[len(raw) // 2] ^= 0x04
    overwrite_raw(encrypted, flipped, bytes(raw))
    overwrite_raw(encrypted, gone, None)

    bad = dicomvault("verify", env=env)
    assert bad.returncode == 1
    assert f"MISMATCH {flipped}" in bad.stdout
    assert "fails authentication" in bad.stdout
    assert f"MISSING {gone}" in bad.stdout
    assert "checked 3 objects" in bad.stdout
    assert "1 missing, 1 damaged" in bad.stdout

    one = dicomvault("verify", "--study", uid("secret/study"), "--sample", "1", env=env)
    assert "checked 1 objects" in one.stdout
    other = dicomvault("verify", "--study", uid("no-such/study"), env=env)
    assert other.returncode == 0
    assert "checked 0 objects" in other.stdout


def _raw_name(archive: Archive, key: str) -> str:
    store = _durable(archive)
    return f"{store.prefix}/{key}" if isinstance(store, S3Store) and store.prefix else key


def test_rotation_rewraps_every_data_key_and_the_old_key_can_go(
    encrypted: Archive, key_file: Path, tmp_path: Path
) -> None:
    for data in _originals():
        encrypted.ingestor.ingest(BytesIO(data))
    before = raw_objects(encrypted)
    new_key = tmp_path / "master-2.key"
    new_key_file(new_key)
    settings = encrypted.settings
    env = command_env(settings) | {
        "DICOMVAULT_ENCRYPTION_KEY_FILE": str(new_key),
        "DICOMVAULT_ENCRYPTION_OLD_KEY_FILES": f'["{key_file}"]',
    }
    rotated = dicomvault("keys", "rotate", env=env)
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert "3 data keys re-wrapped, 0 already current" in rotated.stdout
    again = dicomvault("keys", "rotate", env=env)
    assert "0 data keys re-wrapped, 3 already current" in again.stdout
    assert raw_objects(encrypted) == before  # not one object rewritten

    only_new = command_env(settings) | {"DICOMVAULT_ENCRYPTION_KEY_FILE": str(new_key)}
    ok = dicomvault("verify", env=only_new)
    assert ok.returncode == 0, ok.stdout
    only_old = command_env(settings) | {"DICOMVAULT_ENCRYPTION_KEY_FILE": str(key_file)}
    refused = dicomvault("verify", env=only_old)
    assert refused.returncode == 1
    assert "UNREADABLE" in refused.stdout


def test_aws_kms_wraps_the_data_keys(settings: Settings, s3_endpoint: str) -> None:
    kms = _client("kms", s3_endpoint)
    first = kms.create_key()["KeyMetadata"]["KeyId"]
    second = kms.create_key()["KeyMetadata"]["KeyId"]
    kms_settings = settings.model_copy(
        update={
            "encryption_kms_key_id": first,
            "kms_endpoint_url": s3_endpoint,
            "s3_access_key_id": S3_KEY,
            "s3_secret_access_key": SecretStr(S3_SECRET),
        }
    )
    archive = Archive.open(kms_settings)
    try:
        originals = _originals()
        for data in originals:
            archive.ingestor.ingest(BytesIO(data))
        assert isinstance(archive.store, EncryptedStore)
        key = _keys(archive)[uid("secret/series/0/instance/0")]
        assert archive.store.key_id(key) == f"kms:{first}"
        assert b"".join(archive.store.iter_bytes(key))[132:] == originals[0][132:]
        assert all(SECRET_NAME not in data for data in raw_objects(archive).values())
    finally:
        archive.close()
    from dicomvault import integrity

    rotated = Archive.open(
        kms_settings.model_copy(
            update={"encryption_kms_key_id": second, "encryption_old_kms_key_ids": [first]}
        )
    )
    try:
        report = integrity.rotate_keys(rotated.db, rotated.store)
        assert (report.rewrapped, report.current) == (3, 0)
        assert isinstance(rotated.store, EncryptedStore)
        assert rotated.store.key_id(key) == f"kms:{second}"
        assert integrity.verify(rotated.db, rotated.store).problems == []
    finally:
        rotated.close()


def test_s3_sse_kms_is_the_alternative(s3_endpoint: str) -> None:
    kms = _client("kms", s3_endpoint)
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    bucket = new_bucket(s3_endpoint, "sse")
    store = S3Store(
        bucket,
        "p",
        endpoint_url=s3_endpoint,
        access_key_id=S3_KEY,
        secret_access_key=S3_SECRET,
        sse_kms_key_id=key_id,
    )
    store.put("instances/x.dcm", [b"DICM" + secrets.token_bytes(100)])
    head = _client("s3", s3_endpoint).head_object(Bucket=bucket, Key="p/instances/x.dcm")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith(key_id)
