"""The one ingest function: every door (STOW-RS, C-STORE, import, ...) calls `Ingestor.ingest`,
or `Ingestor.ingest_many` for several instances that arrive together.

Order (DESIGN principle 2): validate -> write the object (fsync'd, checksummed)
-> commit the index rows and an `instance.stored` event in one transaction.
If the commit fails, the new object is deleted; if the process dies between the
two, the object is an orphan that the reconciler adopts, never an index row
pointing at nothing.

`ingest` is `ingest_many` of one instance. For several (the parts of one STOW-RS
request), each is validated, then their objects are written together (one sync on
disk, puts at once on S3: `ObjectStore.put_many`), then their index rows go in one
transaction, each in a savepoint so that one refused undoes only itself, with the
study and series counts and the events written last (`_after`). One thread does it
all: eight threads ingesting one part each spent 1.2 ms of CPU per small instance
where one thread doing the whole request spent 0.63 (docs/performance.md).

Idempotent on SOP Instance UID: the same bytes again are a success that writes
nothing; different bytes follow `Settings.duplicate_policy`.

Index rows hold text clipped to its column's length (`_fit`): files in the wild
carry over-long values, which SQLite would keep and PostgreSQL would refuse, so
without it the same file is stored on one backend and a 500 on the other. The
object and the header JSON keep every value whole.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache, partial
from typing import IO, Any, cast

from sqlalchemy import Connection, String, Table, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError

from dicomvault.config import DuplicatePolicy
from dicomvault.errors import DuplicateConflict, StudyMismatch
from dicomvault.index.db import Database
from dicomvault.index.eventlog import append_event
from dicomvault.index.prepared import Prepared
from dicomvault.index.schema import instances, objects, patients, series, studies
from dicomvault.index.upsert import insert_ignore
from dicomvault.model.origin import Origin
from dicomvault.parsing import Header, parse_header, read_layout
from dicomvault.storage import ObjectStore, new_key
from dicomvault.storage.base import CHUNK_SIZE, PutResult

__all__ = ["IngestResult", "Ingestor", "Outcome"]

log = logging.getLogger(__name__)
BATCH = 64  # most instances of `ingest_many` written and indexed together
_ATTEMPTS = 3  # races lost on one SOP Instance UID before giving up


class Outcome(StrEnum):
    STORED = "stored"  # a new instance
    DUPLICATE = "duplicate"  # identical bytes were already stored: nothing written
    REPLACED = "replaced"  # different bytes replaced the old ones (policy: overwrite)
    VERSIONED = "versioned"  # different bytes became the current version (keep-versions)


@dataclass(frozen=True, slots=True)
class IngestResult:
    outcome: Outcome
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    size: int
    sha256: str
    patient_id: str = ""
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Existing:
    instance_id: int
    object_id: int
    key: str
    sha256: str
    study_uid: str
    series_uid: str


def normalized_chunks(fp: IO[bytes]) -> Iterator[bytes]:
    """The file as stored: the 128-byte preamble zeroed (no polyglot files), the rest as is."""
    fp.seek(128)
    yield bytes(128)
    while chunk := fp.read(CHUNK_SIZE):
        yield chunk


def _sha256(fp: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in normalized_chunks(fp):
        digest.update(chunk)
    return digest.hexdigest()


_API = Origin()

# The statements of the hot path, built once and run on the driver's cursor
# (`index.prepared`): building, cache-keying and executing a statement through
# SQLAlchemy per call costs more than running it on SQLite.
_EXISTING = Prepared(
    select(
        instances.c.id,
        objects.c.id,
        objects.c.key,
        objects.c.sha256,
        studies.c.study_uid,
        series.c.series_uid,
    )
    .join(objects, objects.c.id == instances.c.object_fk)
    .join(series, series.c.id == instances.c.series_fk)
    .join(studies, studies.c.id == instances.c.study_fk)
    .where(instances.c.sop_uid == bindparam("sop_uid"))
)
_KNOWN_SERIES = Prepared(
    select(series.c.study_fk, series.c.id, studies.c.study_uid, studies.c.site)
    .join(studies, studies.c.id == series.c.study_fk)
    .where(series.c.series_uid == bindparam("series_uid"))
)
_INSERT_OBJECT = Prepared(objects.insert().returning(objects.c.id))
_INSERT_INSTANCE = Prepared(instances.insert())
_COUNT_STUDY = Prepared(
    update(studies)
    .where(studies.c.id == bindparam("row"))
    .values(
        num_instances=studies.c.num_instances + bindparam("added"),
        num_series=studies.c.num_series + bindparam("new_series"),
        updated_at=func.now(),
    )
)
_COUNT_SERIES = Prepared(
    update(series)
    .where(series.c.id == bindparam("row"))
    .values(num_instances=series.c.num_instances + bindparam("added"))
)


@dataclass(slots=True)
class _New:
    """An instance of `ingest_many` on its way in: checked, then written, then indexed."""

    index: int  # its place in the caller's list
    fp: IO[bytes]
    header: Header
    existing: _Existing | None  # what it replaces (policy overwrite or keep-versions)


@dataclass(frozen=True, slots=True)
class _Indexed:
    """What indexing one instance leaves for the end of its transaction (`_after`)."""

    outcome: Outcome
    event: str
    header: Header
    size: int | None  # in the event's payload
    provenance: dict[str, Any]
    study_id: int | None = None  # a new instance of this study and series, to count
    series_id: int | None = None
    new_series: bool = False


class Ingestor:
    """Validates, stores and indexes instances. Safe to call from many threads at once."""

    def __init__(
        self, db: Database, store: ObjectStore, policy: DuplicatePolicy = DuplicatePolicy.REJECT
    ) -> None:
        self.db = db
        self.store = store
        self.policy = policy

    def ingest(
        self,
        fp: IO[bytes],
        *,
        expected_study_uid: str | None = None,
        origin: Origin = _API,
    ) -> IngestResult:
        """Store one Part 10 instance read from the seekable file `fp`, sent from `origin`.

        Raises InvalidInstance (nothing stored), StudyMismatch, DuplicateConflict,
        or StorageError / database errors (nothing indexed; retry later).
        """
        (outcome,) = self.ingest_many([fp], expected_study_uid=expected_study_uid, origin=origin)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def ingest_many(
        self,
        files: Sequence[IO[bytes]],
        *,
        expected_study_uid: str | None = None,
        origin: Origin = _API,
    ) -> list[IngestResult | Exception]:
        """Store several instances as `ingest` stores each (see the module doc): for each
        file, in order, its IngestResult or the error `ingest` would have raised."""
        results: list[IngestResult | Exception | None] = [None] * len(files)
        lost: Counter[int] = Counter()  # races lost, per file
        todo = list(range(len(files)))
        while todo:
            again: list[int] = []
            for start in range(0, len(todo), BATCH):
                batch = todo[start : start + BATCH]
                again += self._batch(files, batch, results, lost, expected_study_uid, origin)
            todo = again
        assert all(r is not None for r in results)  # each decided, or decided again
        return cast("list[IngestResult | Exception]", results)

    def _batch(
        self,
        files: Sequence[IO[bytes]],
        indexes: list[int],
        results: list[IngestResult | Exception | None],
        lost: Counter[int],
        expected_study_uid: str | None,
        origin: Origin,
    ) -> list[int]:
        """Ingest the files at `indexes` together, filling in their `results`; the
        indexes to decide again: a race lost to another writer of the same SOP Instance
        UID, or a UID already met in this batch (decided once the first is stored)."""
        news: list[_New] = []
        again: list[int] = []
        uids: set[str] = set()
        for i in indexes:
            try:
                new = self._checked(i, files[i], expected_study_uid, uids)
            except Exception as exc:  # noqa: BLE001 - this file's outcome
                results[i] = exc
                continue
            if isinstance(new, IngestResult):
                results[i] = new
            elif new is None:
                again.append(i)
            else:
                news.append(new)
        written = self.store.put_many([(new_key(), normalized_chunks(n.fp)) for n in news])
        stored: list[tuple[_New, PutResult]] = []
        for new, put in zip(news, written, strict=True):
            if isinstance(put, Exception):
                results[new.index] = put
            else:
                stored.append((new, put))
        try:
            # Instances arriving together share one index transaction (on SQLite also
            # with other threads' instances: see `Database.group_write`).
            indexed = self.db.write_all(
                [partial(self._index, new=new, put=put, origin=origin) for new, put in stored],
                self._after,
            )
        except BaseException:
            for _, put in stored:
                self._delete(put.key)
            raise
        for (new, put), outcome in zip(stored, indexed, strict=True):
            if isinstance(outcome, Exception):
                self._delete(put.key)  # its index rows were not committed
                if not isinstance(outcome, _LostRace):
                    results[new.index] = outcome
                    continue
                lost[new.index] += 1  # another writer stored this UID meanwhile
                if lost[new.index] < _ATTEMPTS:
                    again.append(new.index)  # decide again against the winner's row
                else:
                    results[new.index] = DuplicateConflict(
                        f"instance {new.header.sop_uid} is being written concurrently"
                    )
                continue
            if outcome.outcome is Outcome.REPLACED and new.existing is not None:
                self._delete(new.existing.key)
            results[new.index] = self._result(outcome.outcome, new.header, put.size, put.sha256)
        return again

    def _checked(
        self, index: int, fp: IO[bytes], expected_study_uid: str | None, uids: set[str]
    ) -> _New | IngestResult | None:
        """The file validated and compared with what is stored: a `_New` to write, the
        result of an identical instance already stored, or None for a SOP Instance UID
        already in `uids` (this batch). Raises what `ingest` would."""
        layout = read_layout(fp)
        header = parse_header(fp, layout)
        if expected_study_uid is not None and header.study_uid != expected_study_uid:
            raise StudyMismatch(
                f"instance {header.sop_uid} belongs to study {header.study_uid}, "
                f"not {expected_study_uid}"
            )
        if header.sop_uid in uids:
            return None
        uids.add(header.sop_uid)
        existing = self._existing(header.sop_uid)
        if existing is not None:
            sha = _sha256(fp)
            if sha == existing.sha256:
                return self._result(Outcome.DUPLICATE, header, layout.size, sha)
            self._check_replaceable(existing, header)
        return _New(index, fp, header, existing)

    def _delete(self, key: str) -> None:
        """Delete an object no index row points to (any more)."""
        try:
            self.store.delete(key)
        except Exception:
            log.warning("could not delete the object %s; an orphan now", key, exc_info=True)

    def _result(self, outcome: Outcome, header: Header, size: int, sha: str) -> IngestResult:
        return IngestResult(
            outcome=outcome,
            study_uid=header.study_uid,
            series_uid=header.series_uid,
            sop_uid=header.sop_uid,
            sop_class_uid=header.sop_class_uid,
            size=size,
            sha256=sha,
            patient_id=str(header.patient.get("patient_id") or ""),
        )

    def _check_replaceable(self, existing: _Existing, header: Header) -> None:
        if self.policy is DuplicatePolicy.REJECT:
            raise DuplicateConflict(
                f"SOP Instance UID {header.sop_uid} is already stored with different content"
            )
        if (existing.study_uid, existing.series_uid) != (header.study_uid, header.series_uid):
            raise DuplicateConflict(
                f"SOP Instance UID {header.sop_uid} is stored in study {existing.study_uid} "
                f"series {existing.series_uid}; a new version may not move it"
            )

    def _existing(self, sop_uid: str) -> _Existing | None:
        row = _EXISTING.lookup(self.db, {"sop_uid": sop_uid})
        return _Existing(*row) if row else None

    def _index(self, conn: Connection, new: _New, put: PutResult, origin: Origin) -> _Indexed:
        """The instance's object and instance rows; its counts and event come in `_after`."""
        header, existing = new.header, new.existing
        object_id = _INSERT_OBJECT.scalar(
            conn,
            {
                "sop_uid": header.sop_uid,
                "store": self.store.url,
                "key": put.key,
                "size": put.size,
                "sha256": put.sha256,
                "block_blake3": put.blocks.digests or None,
            },
        )
        provenance = _fit(instances, _provenance(origin))
        if existing is not None:
            outcome = self._replace(conn, header, object_id, existing, provenance)
            return _Indexed(outcome, "instance.updated", header, None, provenance)

        study_id, series_id, new_series = self._levels(conn, header, origin)
        try:
            _INSERT_INSTANCE.execute(
                conn,
                {
                    "sop_uid": header.sop_uid,
                    "series_fk": series_id,
                    "study_fk": study_id,
                    "header": header.json,
                    "object_fk": object_id,
                    **_fit(instances, header.instance),
                    **provenance,
                },
            )
        except IntegrityError as exc:
            # Its savepoint (or transaction) rolls back and the new object is deleted;
            # `ingest_many` then decides again against the winner's row.
            raise _LostRace from exc
        return _Indexed(
            Outcome.STORED,
            "instance.stored",
            header,
            put.size,
            provenance,
            study_id,
            series_id,
            new_series,
        )

    def _after(self, conn: Connection, indexed: list[_Indexed]) -> None:
        """The end of an index transaction: the study and series counts, one update per
        row in row order, then the events. On PostgreSQL the event log's lock is the last
        lock a transaction may take (`index.eventlog`), and rows locked in one order by
        every transaction cannot deadlock on each other."""
        added_to_series: Counter[int] = Counter()
        added_to_study: Counter[int] = Counter()
        new_series: Counter[int] = Counter()
        for done in indexed:
            if done.study_id is not None and done.series_id is not None:
                added_to_series[done.series_id] += 1
                added_to_study[done.study_id] += 1
                new_series[done.study_id] += done.new_series
        for row in sorted(added_to_series):
            _COUNT_SERIES.execute(conn, {"row": row, "added": added_to_series[row]})
        for row in sorted(added_to_study):
            _COUNT_STUDY.execute(
                conn, {"row": row, "added": added_to_study[row], "new_series": new_series[row]}
            )
        for done in indexed:
            self._event(conn, done.event, done.header, done.size, done.provenance)

    def _levels(self, conn: Connection, header: Header, origin: Origin) -> tuple[int, int, bool]:
        """Study and series row ids for the instance, creating rows as needed.

        The common case (more instances of a series already indexed) is one SELECT;
        only a new series or study pays for the insert-or-select of each level.
        """
        known = _KNOWN_SERIES.first(conn, {"series_uid": header.series_uid})
        if known is not None:
            study_fk, series_id, study_uid, site = known
            if study_uid != header.study_uid:
                raise StudyMismatch(
                    f"series {header.series_uid} is already stored in study {study_uid}"
                )
            _check_site(header, site, origin)
            return int(study_fk), int(series_id), False
        patient_id, new_patient = _get_or_create(
            conn,
            patients,
            {"patient_id": header.patient["patient_id"], "issuer": header.patient["issuer"]},
            header.patient,
        )
        study_id, new_study = _get_or_create(
            conn,
            studies,
            {"study_uid": header.study_uid},
            {**header.study, "patient_fk": patient_id, "site": origin.site},
        )
        if new_study and not new_patient:
            _refresh_patient(conn, patient_id, study_id, header)
        if not new_study and origin.site is not None:
            site = conn.execute(select(studies.c.site).where(studies.c.id == study_id))
            _check_site(header, site.scalar_one(), origin)
        series_id, new_series = _get_or_create(
            conn, series, {"series_uid": header.series_uid}, {**header.series, "study_fk": study_id}
        )
        if not new_series:  # created by a concurrent writer between the SELECT and here
            owner = conn.execute(select(series.c.study_fk).where(series.c.id == series_id))
            if owner.scalar_one() != study_id:
                raise StudyMismatch(
                    f"series {header.series_uid} is already stored in another study"
                )
        return study_id, series_id, new_series

    def _replace(
        self,
        conn: Connection,
        header: Header,
        object_id: int,
        existing: _Existing,
        provenance: dict[str, Any],
    ) -> Outcome:
        changed = conn.execute(
            update(instances)
            .where(instances.c.id == existing.instance_id)
            .where(instances.c.object_fk == existing.object_id)
            .values(
                header=header.json,
                object_fk=object_id,
                **_fit(instances, header.instance),
                **provenance,
            )
        ).rowcount
        if changed != 1:
            raise _LostRace
        if self.policy is DuplicatePolicy.KEEP_VERSIONS:
            conn.execute(
                update(objects).where(objects.c.id == existing.object_id).values(state="superseded")
            )
            outcome = Outcome.VERSIONED
        else:
            conn.execute(objects.delete().where(objects.c.id == existing.object_id))
            outcome = Outcome.REPLACED
        self._event(conn, "instance.updated", header, None, provenance)
        return outcome

    def _event(
        self,
        conn: Connection,
        kind: str,
        header: Header,
        size: int | None,
        provenance: dict[str, Any],
    ) -> None:
        payload: dict[str, Any] = {"sop_class_uid": header.sop_class_uid, **provenance}
        if size is not None:
            payload["size"] = size
        append_event(
            conn,
            kind,
            header.study_uid,
            series_uid=header.series_uid,
            sop_uid=header.sop_uid,
            payload=payload,
        )


def _check_site(header: Header, study_site: str | None, origin: Origin) -> None:
    """A sender filing under a site may add only to studies of that site: otherwise a
    user of one site could slip instances into (and learn of) another site's study."""
    if origin.site is not None and study_site != origin.site:
        raise StudyMismatch(
            f"study {header.study_uid} belongs to another site; instances sent for site "
            f"{origin.site} cannot be added to it"
        )


def _provenance(origin: Origin) -> dict[str, Any]:
    """The instance columns (and event payload keys) that record where it came from."""
    return {
        "origin_door": origin.door.value,
        "calling_aet": origin.calling_aet,
        "site": origin.site,
    }


class _LostRace(Exception):
    """Another writer committed the same SOP Instance UID first."""


def _fit(table: Table, values: dict[str, Any]) -> dict[str, Any]:
    """`values` with text clipped to the length of its column in `table` (see module doc)."""
    out = dict(values)
    for name, value in values.items():
        column_type = table.c[name].type
        if isinstance(value, str) and isinstance(column_type, String) and column_type.length:
            out[name] = value[: column_type.length]
    return out


def _refresh_patient(conn: Connection, patient_id: int, study_id: int, header: Header) -> None:
    """A new study of a known patient brings the patient's current demographics (a name
    changed by marriage, a corrected birth date): they replace the stored ones unless
    another study of the patient is more recent by Study Date. The instances keep their
    own headers; this is what patient-level queries and study lists show."""
    newest = conn.execute(
        select(func.max(studies.c.study_date)).where(
            studies.c.patient_fk == patient_id, studies.c.id != study_id
        )
    ).scalar()
    date = header.study.get("study_date")
    if newest is not None and (date is None or str(date) < str(newest)):
        return
    values = {
        name: value
        for name, value in _fit(patients, header.patient).items()
        if value is not None and name not in ("patient_id", "issuer")
    }
    if values:
        conn.execute(update(patients).where(patients.c.id == patient_id).values(values))


def _get_or_create(
    conn: Connection, table: Table, key: dict[str, Any], values: dict[str, Any]
) -> tuple[int, bool]:
    """The id of the row matching `key`, inserting it with `values` if absent; True if new."""
    key, values = _fit(table, key), _fit(table, values)
    insert, find = _get_or_create_statements(conn.dialect.name, table, tuple(key))
    new_id = insert.scalar(conn, {**values, **key})
    if new_id is not None:
        return int(new_id), True
    return int(find.scalar(conn, key)), False


@cache
def _get_or_create_statements(
    dialect: str, table: Table, key: tuple[str, ...]
) -> tuple[Prepared, Prepared]:
    """The insert-or-nothing and the select by `key` of `_get_or_create`, made once per
    dialect and table: a new study brings three of each (patient, study, series)."""
    insert = insert_ignore(dialect, table, list(key)).returning(table.c.id)
    find = select(table.c.id).where(*(table.c[name] == bindparam(name) for name in key))
    return Prepared(insert), Prepared(find)
