"""Bulk import: find DICOM files in folders and zip archives and ingest them.

Files are ingested in batches (`import_batch`): the files of a batch go through
`Ingestor.ingest_many` together, so their objects are made durable at once and their
index rows share a transaction, as the parts of one STOW-RS request do. A bad file
is still reported on its own and never stops its batch.

Zip members are copied into temporary files of our own naming and never
extracted by their stored names, so a member called `../../etc/passwd` cannot
write anywhere (no zip-slip by construction). Member sizes are capped and
checked while copying, since a zip's declared sizes can lie (zip bombs). A
damaged archive or member (bad CRC, corrupt deflate stream, encryption, an
unknown compression method) is reported as invalid like any other bad file;
it never stops the import.
"""

from __future__ import annotations

import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO

from dicomvault.errors import DicomVaultError, DuplicateConflict, InvalidInstance
from dicomvault.ingest import Ingestor, IngestResult, Outcome
from dicomvault.model.origin import Door, Origin

__all__ = ["ImportStatus", "Source", "batches", "find_sources", "import_batch"]

MAX_COMPRESSION_RATIO = 1000
# A batch holds at most this many files and, past its first file, this many bytes: small
# files share a sync and a transaction by the dozen, while the files a worker holds open
# (and, for zip members, spools) stay few.
BATCH_FILES = 32
BATCH_BYTES = 64 * 1024 * 1024
_COPY_CHUNK = 1024 * 1024
# What zipfile raises for damaged archives and members it cannot read.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError)


class ImportStatus(StrEnum):
    STORED = "stored"
    ALREADY_STORED = "already stored"
    NOT_DICOM = "not DICOM"
    INVALID = "invalid"
    CONFLICT = "conflict"
    FAILED = "failed"


@dataclass(frozen=True)
class Source:
    """One candidate file: a path, or a member of a zip archive."""

    label: str
    size: int
    open: Callable[[], AbstractContextManager[IO[bytes]]]


@dataclass(frozen=True)
class ImportResult:
    source: str
    status: ImportStatus
    detail: str = ""
    size: int = 0


def find_sources(paths: list[Path], *, max_member_bytes: int) -> Iterator[Source]:
    """Every file under `paths` (recursively), with zip archives opened as folders."""
    for root in paths:
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such file or folder")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if path.suffix.lower() == ".zip" and zipfile.is_zipfile(path):
                yield from _zip_sources(path, max_member_bytes)
            else:
                yield Source(str(path), path.stat().st_size, _opener(path))


def _opener(path: Path) -> Callable[[], AbstractContextManager[IO[bytes]]]:
    return lambda: open(path, "rb")


def _zip_sources(path: Path, max_member_bytes: int) -> Iterator[Source]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
    except _ZIP_ERRORS as exc:
        yield Source(str(path), path.stat().st_size, _refuser(f"damaged zip archive: {exc}"))
        return
    for member in members:
        label = f"{path}!{member.filename}"
        yield Source(label, member.file_size, _member_opener(path, member, max_member_bytes))


def _refuser(reason: str) -> Callable[[], AbstractContextManager[IO[bytes]]]:
    def refuse() -> AbstractContextManager[IO[bytes]]:
        raise InvalidInstance(reason)

    return refuse


def _member_opener(
    path: Path, member: zipfile.ZipInfo, max_bytes: int
) -> Callable[[], AbstractContextManager[IO[bytes]]]:
    def open_member() -> AbstractContextManager[IO[bytes]]:
        if member.file_size > max_bytes:
            raise InvalidInstance(f"zip member is {member.file_size} bytes, over {max_bytes}")
        if member.compress_size and member.file_size / member.compress_size > MAX_COMPRESSION_RATIO:
            raise InvalidInstance("zip member expands suspiciously (compression ratio > 1000)")
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - returned to the caller's with-block
        try:
            _copy_member(path, member, max_bytes, spool)
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return nullcontext(spool)

    return open_member


def _copy_member(path: Path, member: zipfile.ZipInfo, max_bytes: int, out: IO[bytes]) -> None:
    copied = 0
    try:
        with zipfile.ZipFile(path) as archive, archive.open(member) as stream:
            while chunk := stream.read(_COPY_CHUNK):
                copied += len(chunk)
                if copied > max_bytes or copied > member.file_size:
                    raise InvalidInstance("zip member is larger than it declares")
                out.write(chunk)
    except _ZIP_ERRORS as exc:
        raise InvalidInstance(f"damaged zip member: {exc}") from exc


def _is_part10(fp: IO[bytes]) -> bool:
    fp.seek(128)
    magic = fp.read(4)
    fp.seek(0)
    return magic == b"DICM"


_IMPORT = Origin(Door.IMPORT)


def batches(sources: Sequence[Source]) -> Iterator[list[Source]]:
    """`sources` in order, cut into batches of at most BATCH_FILES files and (unless a
    single file is larger) BATCH_BYTES bytes."""
    batch: list[Source] = []
    size = 0
    for source in sources:
        if batch and (len(batch) == BATCH_FILES or size + source.size > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(source)
        size += source.size
    if batch:
        yield batch


def import_batch(ingestor: Ingestor, sources: Sequence[Source]) -> list[ImportResult]:
    """Ingest the sources together (one `Ingestor.ingest_many`); each source's result,
    in order. Never raises for bad files, only reports."""
    results: list[ImportResult | None] = [None] * len(sources)
    with ExitStack() as files:
        opened: list[tuple[int, IO[bytes]]] = []
        for i, source in enumerate(sources):
            try:
                fp = files.enter_context(source.open())
                if _is_part10(fp):
                    opened.append((i, fp))
                else:
                    status = ImportStatus.NOT_DICOM
                    results[i] = ImportResult(source.label, status, "no DICM prefix")
            except Exception as exc:  # noqa: BLE001 - this source's outcome
                results[i] = _failed(source, exc)
        try:
            outcomes = ingestor.ingest_many([fp for _, fp in opened], origin=_IMPORT)
        except Exception as exc:  # noqa: BLE001 - the index or store failed the whole batch
            outcomes = [exc] * len(opened)
        for (i, _), outcome in zip(opened, outcomes, strict=True):
            results[i] = _result(sources[i], outcome)
    return [result for result in results if result is not None]


def _result(source: Source, outcome: IngestResult | Exception) -> ImportResult:
    if isinstance(outcome, Exception):
        return _failed(source, outcome)
    status = (
        ImportStatus.ALREADY_STORED if outcome.outcome is Outcome.DUPLICATE else ImportStatus.STORED
    )
    return ImportResult(source.label, status, outcome.sop_uid, outcome.size)


def _failed(source: Source, exc: Exception) -> ImportResult:
    """What a source that could not be stored is reported as."""
    if isinstance(exc, InvalidInstance):
        return ImportResult(source.label, ImportStatus.INVALID, str(exc))
    if isinstance(exc, DuplicateConflict):
        return ImportResult(source.label, ImportStatus.CONFLICT, str(exc))
    if isinstance(exc, DicomVaultError | OSError):
        return ImportResult(source.label, ImportStatus.FAILED, str(exc))
    # Not a property of the file but a fault of ours: reported, and the import goes on.
    return ImportResult(source.label, ImportStatus.FAILED, f"{type(exc).__name__}: {exc}")
