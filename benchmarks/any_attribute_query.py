"""Benchmark: any-attribute query (a non-level attribute) over 1,000,000 instances on PostgreSQL.

    python -m benchmarks.any_attribute_query [--instances N] [--database-url URL] [--runs R]

Without --database-url it starts a throw-away PostgreSQL (Debian's `postgresql`
binaries, as the test suite does). The index is filled by bulk SQL
(`INSERT ... SELECT generate_series(...)`), not by ingesting files: every row's
header is a realistic CT header (78 top-level attributes, a sequence, a private
block; about 4 KB of DICOM JSON) taken from a synthetic instance parsed by the real
parser, with the per-instance values (UIDs, instance number, position, slice
thickness, manufacturer, private value, requested procedure) varied in SQL. The
GIN index is built after the load, as a bulk import would. Then the real query
builder (`dicomvault.query.search`, what QIDO-RS and C-FIND call) runs each query
R times; the first run of each is a warm-up and not counted. Prints p50 / p95.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy import text

from dicomvault.index import migrate
from dicomvault.index.db import Database
from dicomvault.model.levels import Level
from dicomvault.parsing import parse_header, read_layout
from dicomvault.query import QueryRequest, search
from dicomvault.synthetic import dataset, to_bytes, uid

console = Console()

PER_SERIES = 50
PER_STUDY = 100
BATCH = 50_000


def template_header() -> dict[str, Any]:
    """The DICOM JSON of a realistic CT instance, as ingest stores it."""
    ds: Dataset = dataset(
        study_uid=uid("bench/st"), series_uid=uid("bench/se"), sop_uid=uid("bench/i"), size=8
    )
    extra: dict[str, Any] = {
        "InstitutionName": "General Hospital",
        "StationName": "CT01",
        "SoftwareVersions": "VA40A",
        "DeviceSerialNumber": "12345",
        "ProtocolName": "CHEST ROUTINE",
        "AcquisitionDate": "20240115",
        "AcquisitionTime": "101512.123456",
        "ContentDate": "20240115",
        "ContentTime": "101530",
        "FrameOfReferenceUID": uid("bench/for"),
        "PositionReferenceIndicator": "",
        "SliceLocation": "-120.5",
        "PatientPosition": "HFS",
        "KVP": "120",
        "XRayTubeCurrent": 250,
        "ExposureTime": 500,
        "Exposure": 125,
        "ConvolutionKernel": "B30f",
        "FilterType": "FLAT",
        "FocalSpots": "1.2",
        "GantryDetectorTilt": "0",
        "TableHeight": "150",
        "RotationDirection": "CW",
        "DataCollectionDiameter": "500",
        "ReconstructionDiameter": "360",
        "DistanceSourceToDetector": "1040",
        "DistanceSourceToPatient": "570",
        "CTDIvol": 8.5,
        "PatientAge": "054Y",
        "PatientWeight": "70",
        "PatientSize": "1.7",
        "OperatorsName": "Kim^Lee",
        "PerformingPhysicianName": "House^Greg",
        "AcquisitionNumber": 1,
        "LargestImagePixelValue": 2048,
        "SmallestImagePixelValue": 0,
    }
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    item = Dataset()
    item.RequestedProcedureID = "RP0"
    item.RequestedProcedureDescription = "CT CHEST"
    item.ScheduledProcedureStepID = "SPS0"
    ds.RequestAttributesSequence = Sequence([item])
    block = ds.private_block(0x0009, "DVBENCH", create=True)
    block.add_new(0x01, "LO", "VAL-0")
    block.add_new(0x02, "DS", "1.5")
    fp = BytesIO(to_bytes(ds))
    header = parse_header(fp, read_layout(fp)).json
    for varied in ("00080018", "00200013", "00200032", "00180050", "00080070", "00091001"):
        header.pop(varied, None)
    header.pop("00400275", None)
    return header


# Per-row values, made in SQL from the row number g (1-based).
VARIED = """
  jsonb_build_object(
    '00080018', jsonb_build_object('vr', 'UI', 'Value', jsonb_build_array('2.25.9' || g)),
    '00200013', jsonb_build_object('vr', 'IS', 'Value', jsonb_build_array((g - 1) % 50 + 1)),
    '00200032', jsonb_build_object('vr', 'DS',
                  'Value', jsonb_build_array(-180.0, -180.0, ((g - 1) % 50) * 2.5)),
    '00180050', jsonb_build_object('vr', 'DS', 'Value', jsonb_build_array(
                  CASE WHEN g % 100 = 0 THEN 0.6 ELSE (ARRAY[1.0, 2.5, 5.0])[g % 3 + 1] END)),
    '00080070', jsonb_build_object('vr', 'LO', 'Value', jsonb_build_array(
                  (ARRAY['ACME', 'SIEMENS', 'GE MEDICAL SYSTEMS', 'PHILIPS'])[g % 4 + 1])),
    '00091001', jsonb_build_object('vr', 'LO', 'Value', jsonb_build_array('VAL-' || (g % 10000))),
    '00400275', jsonb_build_object('vr', 'SQ', 'Value', jsonb_build_array(jsonb_build_object(
                  '00401001', jsonb_build_object('vr', 'SH',
                      'Value', jsonb_build_array('RP' || ((g - 1) / 100))),
                  '00321060', jsonb_build_object('vr', 'LO', 'Value', jsonb_build_array(
                      (ARRAY['CT CHEST', 'CT HEAD', 'CT ABDOMEN', 'CT KNEE'])[(g / 100) % 4 + 1]))
                  )))
  )
"""

# VARIED is a constant of this module: nothing from outside is spliced in.
INSERT_INSTANCES = (
    "INSERT INTO instances (id, sop_uid, series_fk, study_fk, sop_class_uid, instance_number, "  # noqa: S608
    "rows, columns, bits_allocated, transfer_syntax, header, object_fk) "
    "SELECT g, '2.25.9' || g, (g - 1) / 50 + 1, (g - 1) / 100 + 1, "
    "'1.2.840.10008.5.1.4.1.1.2', (g - 1) % 50 + 1, 512, 512, 16, '1.2.840.10008.1.2.1', "
    "CAST(:template AS jsonb) || "
    + VARIED
    + ", g FROM generate_series(CAST(:a AS bigint), CAST(:b AS bigint)) g"
)


def fill(db: Database, instances: int) -> None:
    """Bulk-insert patients, studies, series, objects and instances (ids 1..N)."""
    studies = -(-instances // PER_STUDY)
    series = -(-instances // PER_SERIES)
    template = json.dumps(template_header())
    with db.write() as conn:
        conn.execute(text("TRUNCATE instances, objects, series, studies, patients CASCADE"))
        conn.execute(text("DROP INDEX IF EXISTS ix_instances_header"))
        conn.execute(
            text(
                "INSERT INTO patients (id, patient_id, issuer, patient_name, patient_name_norm) "
                "SELECT g, 'P' || g, '', 'Patient^' || g, 'PATIENT^' || g "
                "FROM generate_series(1, CAST(:n AS bigint)) g"
            ),
            {"n": studies},
        )
        conn.execute(
            text(
                "INSERT INTO studies (id, study_uid, patient_fk, study_date, accession_number, "
                "description, num_series, num_instances) "
                "SELECT g, '2.25.1' || g, g, '2024' || lpad(((g % 12) + 1)::text, 2, '0') || '15',"
                " 'A' || g, 'CT CHEST', 2, 100 FROM generate_series(1, CAST(:n AS bigint)) g"
            ),
            {"n": studies},
        )
        conn.execute(
            text(
                "INSERT INTO series (id, series_uid, study_fk, modality, series_number, "
                "num_instances) SELECT g, '2.25.2' || g, (g - 1) / 2 + 1, 'CT', (g - 1) % 2 + 1,"
                " 50 FROM generate_series(1, CAST(:n AS bigint)) g"
            ),
            {"n": series},
        )
    with Progress(console=console) as progress:
        task = progress.add_task("inserting instances", total=instances)
        for start in range(1, instances + 1, BATCH):
            end = min(start + BATCH - 1, instances)
            with db.write() as conn:
                conn.execute(
                    text(
                        "INSERT INTO objects (id, sop_uid, store, key, size, sha256) "
                        "SELECT g, '2.25.9' || g, 'bench://', 'instances/' || g || '.dcm', "
                        "524288, md5(g::text) || md5(g::text) "
                        "FROM generate_series(CAST(:a AS bigint), CAST(:b AS bigint)) g"
                    ),
                    {"a": start, "b": end},
                )
                conn.execute(
                    text(INSERT_INSTANCES),
                    {"a": start, "b": end, "template": template},
                )
            progress.update(task, completed=end)
    for table in ("patients", "studies", "series", "objects", "instances"):
        with db.write() as conn:
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                    f"(SELECT max(id) FROM {table}))"
                )
            )
    console.print("building the GIN index (jsonb_path_ops) on instances.header ...")
    started = time.perf_counter()
    with db.write() as conn:
        conn.execute(text("SET LOCAL maintenance_work_mem = '1GB'"))
        conn.execute(
            text("CREATE INDEX ix_instances_header ON instances USING gin (header jsonb_path_ops)")
        )
    console.print(f"  {time.perf_counter() - started:.0f} s")
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


QUERIES: list[tuple[str, Level, dict[str, str]]] = [
    ("SliceThickness=0.6 (1% of instances)", Level.INSTANCE, {"00180050": "0.6"}),
    ("private 00091001=VAL-1234 (0.01%)", Level.INSTANCE, {"00091001": "VAL-1234"}),
    ("Manufacturer=ACME (25%)", Level.INSTANCE, {"00080070": "ACME"}),
    (
        "sequence 00400275.00401001=RP4321 (one study)",
        Level.INSTANCE,
        {"00400275.00401001": "RP4321"},
    ),
    (
        "SliceThickness=0.6 and Manufacturer=ACME",
        Level.INSTANCE,
        {"00180050": "0.6", "00080070": "ACME"},
    ),
    ("studies with private 00091001=VAL-1234", Level.STUDY, {"00091001": "VAL-1234"}),
    ("Manufacturer=PHIL* (wildcard: path scan)", Level.INSTANCE, {"00080070": "PHIL*"}),
]


def measure(db: Database, runs: int) -> list[tuple[str, int, float, float]]:
    out = []
    for label, level, filters in QUERIES:
        request = QueryRequest(level=level, filters=filters, limit=100)
        times = []
        found = 0
        for run in range(runs + 1):
            started = time.perf_counter()
            result = search(db, request, max_results=1000)
            elapsed = (time.perf_counter() - started) * 1000
            found = len(result.matches)
            if run:
                times.append(elapsed)
        times.sort()
        p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
        out.append((label, found, statistics.median(times), p95))
    return out


@contextmanager
def postgres(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.support.postgres import TempPostgres, find_bin

    bindir = find_bin()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed: install `postgresql` or give --database-url")
    server = TempPostgres(bindir)
    try:
        yield server.start()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--database-url", help="an existing PostgreSQL (its index is REPLACED)")
    args = parser.parse_args()
    with postgres(args.database_url) as url:
        db = Database(url)
        migrate.upgrade(db)
        started = time.perf_counter()
        fill(db, args.instances)
        console.print(
            f"loaded {args.instances:,} instances in {time.perf_counter() - started:.0f} s"
        )
        with db.read() as conn:
            size = conn.execute(
                text(
                    "SELECT pg_size_pretty(pg_total_relation_size('instances')), "
                    "pg_size_pretty(pg_relation_size('ix_instances_header'))"
                )
            ).one()
        console.print(f"instances table {size[0]}, GIN index {size[1]}")
        table = Table("query (limit 100, through query.search)", "matches", "p50 ms", "p95 ms")
        for label, found, p50, p95 in measure(db, args.runs):
            table.add_row(label, str(found), f"{p50:.1f}", f"{p95:.1f}")
        console.print(table)
        db.dispose()


if __name__ == "__main__":
    main()
