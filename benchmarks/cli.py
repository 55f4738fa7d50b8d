"""`python -m benchmarks run`: the whole comparison in one command."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from tests.support.postgres import TempPostgres, find_bin

from benchmarks import bulk, data, leftovers, measure
from benchmarks.backends import BACKENDS, backend
from benchmarks.cpu import tree_cpu_s
from benchmarks.cstore import STORESCU, storescu
from benchmarks.report import Figures, print_table
from benchmarks.servers import (
    Server,
    dicomvault_server,
    orthanc_available,
    orthanc_postgres_available,
    orthanc_server,
)

RESULTS = Path(__file__).parent / "results"

Factory = Callable[[], AbstractContextManager[Server]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure dicomvault (and Orthanc, side by side) on this machine.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the benchmark and print the figures")
    run.add_argument("--against", choices=["orthanc", "none"], default="orthanc")
    run.add_argument("--backend", choices=BACKENDS, default="sqlite")
    run.add_argument("--quick", action="store_true", help="small sets, one round (minutes)")
    run.add_argument("--rounds", type=int, help="rounds of ingestion (default 3, quick 1)")
    run.add_argument(
        "--qido-sizes",
        default=None,
        help="instance counts at which QIDO-RS is timed (default 10000,100000; quick 10000)",
    )
    run.add_argument("--large-mb", type=int, help="size of the large instance (default 1024)")
    run.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 1,
        help="dicomvault server processes (default: one per CPU core, as Orthanc uses every "
        "core); the large instance is measured with one, whose peak memory is the figure",
    )
    run.add_argument(
        "--only",
        nargs="*",
        choices=["stow", "cstore", "retrieve", "import", "qido", "large", "disk"],
        help="run only these parts",
    )
    return parser


def _servers(args: argparse.Namespace) -> list[tuple[str, Factory]]:
    def dicomvault() -> AbstractContextManager[Server]:
        return _dicomvault(args.backend, args.processes)

    servers: list[tuple[str, Factory]] = [("dicomvault", dicomvault)]
    if args.against == "orthanc":
        missing = orthanc_available()
        if missing:
            raise SystemExit(missing)
        postgres = args.backend == "postgres-s3" and orthanc_postgres_available()
        servers.append(("orthanc", lambda: _orthanc(postgres)))
    return servers


@contextmanager
def _orthanc(postgres: bool) -> Iterator[Server]:
    """A fresh Orthanc; with `postgres`, its index in a fresh durable PostgreSQL of its own
    (as dicomvault's in the postgres-s3 pair), else in its default SQLite."""
    if not postgres:
        with orthanc_server() as server:
            yield server
        return
    bindir = find_bin()
    assert bindir is not None  # the postgres-s3 pair found it already
    database = TempPostgres(bindir, durable=True)
    database.start()
    try:
        with orthanc_server(postgres_port=database.port) as server:
            server.services = [database.pid]
            yield server
    finally:
        database.stop()


class _dicomvault(AbstractContextManager[Server]):
    """A fresh dicomvault with a fresh backend (a new PostgreSQL and bucket if asked)."""

    def __init__(self, backend: str, processes: int = 1) -> None:
        self.backend = backend
        self.processes = processes
        self.stack = ExitStack()

    def __enter__(self) -> Server:
        used = self.stack.enter_context(backend(self.backend))
        server = self.stack.enter_context(dicomvault_server(used.env, self.processes))
        server.services = list(used.services)
        return server

    def __exit__(self, *exc: object) -> None:
        self.stack.close()


def _alternating(servers: list[tuple[str, Factory]], round_: int) -> Iterator[tuple[str, Factory]]:
    """The servers in this round's order (who goes first alternates). When one is done,
    what it left unwritten in the page cache is written out before the next starts:
    Orthanc does not sync what it stores, and its writeback would otherwise run during
    the next measurement (and be waited for by a `syncfs`, which writes out every
    dirty page of the file system)."""
    for server in servers if round_ % 2 == 0 else list(reversed(servers)):
        yield server
        os.sync()


STOW_CASES = [  # (set, clients, instances per request)
    ("ct", 1, 1),
    ("ct", 4, 1),
    ("ct", 1, 50),
    ("ct", 4, 50),
    ("small", 1, 1),
    ("small", 4, 1),
    ("small", 1, 50),
    ("small", 4, 50),
]


def _ingestion(args: argparse.Namespace, work: data.Workload, figures: Figures) -> None:
    rounds = args.rounds or (1 if args.quick else 3)
    for round_ in range(rounds):
        with leftovers.deferred():
            _ingestion_round(args, work, figures, round_)


def _ingestion_round(
    args: argparse.Namespace, work: data.Workload, figures: Figures, round_: int
) -> None:
    parts = args.only
    for name, factory in _alternating(_servers(args), round_):
        with factory() as server:
            k = 1
            if not parts or "stow" in parts:
                for kind, clients, per in STOW_CASES:
                    files = [data.variant(f, k) for f in getattr(work, kind)]
                    k += 1
                    before = _cpu(server)
                    result = measure.stow(server.dicomweb, files, clients, per)
                    label = f"STOW-RS {kind} {clients} client(s) x {per}/request"
                    figures.add(label, name, result["instances_per_s"], "inst/s")
                    figures.add(label + " MB/s", name, result["mb_per_s"], "MB/s")
                    _add_cpu(figures, label, name, server, before, result, len(files))
            if (not parts or "cstore" in parts) and server.dicom_port:
                for associations in (1, 4):
                    files = [data.variant(f, k) for f in work.ct]
                    k += 1
                    before = _cpu(server)
                    result = storescu(server.dicom_port, server.ae_title, files, associations)
                    label = f"C-STORE ct {associations} association(s)"
                    figures.add(label, name, result["instances_per_s"], "inst/s")
                    figures.add(label + " MB/s", name, result["mb_per_s"], "MB/s")
                    _add_cpu(figures, label, name, server, before, result, len(files))
            if round_ == 0 and (not parts or "retrieve" in parts):
                _retrieval(server, name, work, figures, k)


def _import(args: argparse.Namespace, work: data.Workload, figures: Figures) -> None:
    """Each set loaded from a folder: `dicomvault import`, Orthanc's POST /instances."""
    servers = dict(_servers(args))
    for round_ in range(args.rounds or (1 if args.quick else 3)):
        with leftovers.deferred():
            for k, kind in ((97, "small"), (98, "ct")):
                folder = bulk.folder_of([data.variant(f, k) for f in getattr(work, kind)])
                leftovers.remove(folder)
                for name, _ in _alternating(list(servers.items()), round_):
                    if name == "dicomvault":
                        with backend(args.backend) as used:
                            result = bulk.dicomvault_import(used.env, folder)
                    else:
                        with servers[name]() as server:
                            root = server.dicomweb.removesuffix("/dicom-web")
                            result = bulk.orthanc_post(root, folder)
                    label = f"bulk import {kind}, {bulk.WORKERS} workers"
                    figures.add(label, name, result["instances_per_s"], "inst/s")
                    figures.add(label + " MB/s", name, result["mb_per_s"], "MB/s")
                    if "start_up_s" in result:  # left out of dicomvault's rate
                        figures.add(
                            label + ", command start-up",
                            name,
                            result["start_up_s"],
                            "s",
                            lower_is_better=True,
                        )


def _cpu(server: Server) -> tuple[float, float]:
    """CPU seconds used so far by the server's processes and by its services'."""
    return tree_cpu_s([server.process.pid]), tree_cpu_s(server.services)


def _add_cpu(
    figures: Figures,
    label: str,
    name: str,
    server: Server,
    before: tuple[float, float],
    result: dict[str, float],
    instances: int,
) -> None:
    """CPU per instance of one ingestion case: the server, its services (database,
    S3 endpoint), the clients. They share the machine's cores: their sum bounds the
    rate as much as the server's part does."""
    server_s, services_s = (now - then for now, then in zip(_cpu(server), before, strict=True))
    per = 1e3 / instances
    figures.add(f"{label} CPU: server", name, server_s * per, "ms/inst", lower_is_better=True)
    if server.services:
        figures.add(
            f"{label} CPU: database, S3", name, services_s * per, "ms/inst", lower_is_better=True
        )
    figures.add(
        f"{label} CPU: client", name, result["client_cpu_s"] * per, "ms/inst", lower_is_better=True
    )


def _retrieval(server: Server, name: str, work: data.Workload, figures: Figures, k: int) -> None:
    """WADO-RS, metadata and rendered timings on a study stored for the purpose."""
    ct = [data.variant(f, k) for f in work.ct[:100]]  # one CT study of 100 instances
    big = [data.variant(f, k) for f in work.small[:1000]]  # one series of 1,000 instances
    measure.stow(server.dicomweb, ct + big, 4, 50)
    study = data.relabel(data.ct_study(0), k)
    url = f"{server.dicomweb}/studies/{study}"
    measure.wado_study(url)  # the first retrieval after the stores is not timed
    # Nine timed retrievals of 52 MB: a retrieval takes 25-60 ms, and the median of
    # three varied by a third from run to run on a shared machine.
    runs = [measure.wado_study(url) for _ in range(9)]
    figures.add(
        "WADO-RS study retrieve (CT, 100 instances)",
        name,
        measure.median_of(runs)["mb_per_s"],
        "MB/s",
    )
    big_study = data.relabel(work.big_series_study, k)
    big_series = data.relabel(work.big_series, k)
    meta = {"Accept": "application/dicom+json"}
    for label, url in (
        ("study metadata (1,000 instances)", f"{server.dicomweb}/studies/{big_study}/metadata"),
        (
            "series metadata (1,000 instances)",
            f"{server.dicomweb}/studies/{big_study}/series/{big_series}/metadata",
        ),
    ):
        result = measure.latency(_getter(url, meta), repeat=5)
        figures.add(label + " p50", name, result["p50_ms"], "ms", lower_is_better=True)
    instances = httpx.get(f"{server.dicomweb}/studies/{study}/instances", headers=meta).json()
    first = instances[0]
    sop = first["00080018"]["Value"][0]
    series = first["0020000E"]["Value"][0]
    rendered = f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}/rendered"
    jpeg = {"Accept": "image/jpeg"}
    result = measure.latency(lambda c: c.get(rendered, headers=jpeg), repeat=10)
    figures.add(
        "rendered instance (512x512 JPEG) p50", name, result["p50_ms"], "ms", lower_is_better=True
    )
    # A server without the thumbnail resource (Orthanc's DICOMweb plugin 1.7 answers
    # 404) has no figure: the table shows n/a for it.
    thumbnail = rendered.removesuffix("/rendered") + "/thumbnail"
    if httpx.get(thumbnail, headers=jpeg).status_code == 200:
        result = measure.latency(lambda c: c.get(thumbnail, headers=jpeg), repeat=10)
        figures.add(
            "thumbnail of that instance p50", name, result["p50_ms"], "ms", lower_is_better=True
        )


def _getter(url: str, headers: dict[str, str]) -> Callable[[httpx.Client], httpx.Response]:
    def get(client: httpx.Client) -> httpx.Response:
        return client.get(url, headers=headers)

    return get


QUERIES: list[tuple[str, Callable[[int, data.Workload], str]]] = [
    ("study", lambda k, w: f"studies?PatientID=PSM{(k * 37) % 400 + 1:05d}"),
    ("study", lambda k, w: "studies?PatientName=Synthetic%5ESmall1*&limit=100"),
    ("study", lambda k, w: "studies?StudyDate=20240301-20240415&limit=100"),
    ("study", lambda k, w: "studies?ModalitiesInStudy=MR&limit=100"),
    ("series", lambda k, w: f"studies/{data.relabel(w.big_series_study, k)}/series"),
    ("instance", lambda k, w: f"studies/{data.relabel(data.small_study(7), k)}/instances"),
]


def _qido(args: argparse.Namespace, work: data.Workload, figures: Figures) -> None:
    sizes = [
        int(s) for s in (args.qido_sizes or ("10000" if args.quick else "10000,100000")).split(",")
    ]
    for name, factory in _servers(args):
        with factory() as server:
            stored, k = 0, 1
            for size in sizes:
                while stored < size:
                    files = [data.variant(f, k) for f in work.small[: size - stored]]
                    measure.stow(server.dicomweb, files, 4, 50)
                    stored += len(files)
                    k += 1
                for level in ("study", "series", "instance"):
                    times: list[float] = []
                    with httpx.Client(timeout=600) as client:
                        for query_level, query in QUERIES:
                            if query_level != level:
                                continue
                            for variant in range(1, min(k, 6)):
                                url = f"{server.dicomweb}/{query(variant, work)}"
                                client.get(url)  # warm
                                started = time.perf_counter()
                                response = client.get(url)
                                times.append((time.perf_counter() - started) * 1000)
                                if response.status_code not in (200, 204):
                                    raise RuntimeError(f"{url}: {response.status_code}")
                    label = f"QIDO-RS {level} search @ {size:,} instances"
                    figures.add(
                        label + " p50",
                        name,
                        measure.percentile(times, 50),
                        "ms",
                        lower_is_better=True,
                    )
                    figures.add(
                        label + " p95",
                        name,
                        measure.percentile(times, 95),
                        "ms",
                        lower_is_better=True,
                    )


def _large(args: argparse.Namespace, work: data.Workload, figures: Figures) -> None:
    megabytes = args.large_mb or (256 if args.quick else 1024)
    path = data.large_instance(megabytes)
    study = data.large_study()
    one_process = argparse.Namespace(**{**vars(args), "processes": 1})
    for name, factory in _servers(one_process):
        with factory() as server:
            seconds = measure.stow_file(server.dicomweb, path)
            figures.add(
                f"STOW-RS one {megabytes} MB instance",
                name,
                path.stat().st_size / seconds / 1e6,
                "MB/s",
            )
            result = measure.wado_study(f"{server.dicomweb}/studies/{study}")
            figures.add(f"WADO-RS one {megabytes} MB instance", name, result["mb_per_s"], "MB/s")
            figures.add(
                f"peak server RSS, {megabytes} MB in and out",
                name,
                server.peak_rss_mb(),
                "MB",
                lower_is_better=True,
            )
    # A whole study in one request, as tools that upload a study at once send it: many
    # parts, each small, together hundreds of megabytes. A fresh server for each, so
    # that its peak memory is this request's.
    files = [data.variant(f, 90) for f in work.ct]
    size = sum(len(f) for f in files) / 1e6
    label = f"{len(files)} CT ({size:.0f} MB) in one STOW-RS request"
    for name, factory in _servers(one_process):
        with factory() as server:
            seconds = measure.stow_one_request(server.dicomweb, files)
            figures.add(label, name, len(files) / seconds, "inst/s")
            figures.add(
                f"peak server RSS, {label}",
                name,
                server.peak_rss_mb(),
                "MB",
                lower_is_better=True,
            )


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    figures = Figures()
    parts = args.only
    report: dict[str, Any] = {
        "command": "python -m benchmarks " + " ".join(_argv()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "backend": args.backend,
        "orthanc_index": (
            "postgresql"
            if args.backend == "postgres-s3" and orthanc_postgres_available()
            else "sqlite"
        ),
    }
    if args.backend == "postgres-s3" and not orthanc_postgres_available():
        print(
            "Orthanc's PostgreSQL plugin is not installed: Orthanc keeps its default SQLite "
            "index in this run (apt-get install orthanc-postgresql to compare like with like)"
        )
    if not parts or "disk" in parts:
        disk = measure.disk_speed(data.CACHE.parent, 256 if args.quick else 2048)
        report["disk"] = disk
        write, read = disk["write_mb_per_s"], disk["read_mb_per_s"]
        print(f"disk: write {write:.0f} MB/s, read {read:.0f} MB/s")
    work = data.load(ct=200 if args.quick else 1000, small=1000 if args.quick else 5000)
    if not parts or {"stow", "cstore", "retrieve"} & set(parts):
        _ingestion(args, work, figures)
    if not parts or "import" in parts:
        _import(args, work, figures)
    if not parts or "qido" in parts:
        with leftovers.deferred():
            _qido(args, work, figures)
    if not parts or "large" in parts:
        with leftovers.deferred():
            _large(args, work, figures)
    report["figures"] = figures.as_json()
    report["seconds"] = round(time.time() - started)
    print_table(figures, report.get("disk"), STORESCU)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{args.backend}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"written to {out}")
    return report


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


def main() -> None:
    args = _parser().parse_args()
    data.CACHE.mkdir(parents=True, exist_ok=True)
    run(args)
