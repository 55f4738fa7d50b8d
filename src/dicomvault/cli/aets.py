"""`dicomvault aets`, `dicomvault routes` and `dicomvault send`: the DICOM peers the
archive knows, what it forwards to them, and sending studies to them."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from dicomvault.cli.common import ConfigOption, DataDirOption, console, err_console, open_database
from dicomvault.dimse import registry

__all__ = ["aets_app", "routes_app", "send"]

aets_app = typer.Typer(
    help="The DICOM peers the archive knows: where C-MOVE and send deliver, what each may "
    "do, which site its instances belong to.",
    no_args_is_help=True,
)
routes_app = typer.Typer(
    help="Auto-routing: forward every instance received from one AE to another, as "
    "durable jobs with retries.",
    no_args_is_help=True,
)


def _title(value: str) -> str:
    title = value.strip()
    if not registry.valid_ae_title(title):
        err_console.print(
            f"invalid AE title {value!r}: 1-16 ASCII characters, no backslash", markup=False
        )
        raise typer.Exit(2)
    return title


@aets_app.command("add")
def add(
    ae_title: Annotated[str, typer.Argument(help="The peer's AE title (1-16 characters).")],
    host: Annotated[
        str | None,
        typer.Option(help="Where it listens; also the only address it may call from."),
    ] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Its DICOM port.")] = None,
    tls: Annotated[bool, typer.Option("--tls", help="Reach it over DICOM TLS.")] = False,
    site: Annotated[
        str | None, typer.Option(help="Site code of the instances it sends (and reads).")
    ] = None,
    store: Annotated[bool, typer.Option(help="May it send instances (C-STORE)?")] = True,
    query: Annotated[bool, typer.Option(help="May it query (C-FIND)?")] = True,
    retrieve: Annotated[bool, typer.Option(help="May it retrieve (C-MOVE, C-GET)?")] = True,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Add a peer, or replace the entry of the same AE title."""
    title = _title(ae_title)
    if (host is None) != (port is None) and port is not None:
        err_console.print("--port needs --host: where does the peer listen?")
        raise typer.Exit(2)
    with open_database(config, data_dir) as db:
        if site is not None:
            from dicomvault.access.accounts import site_directory

            with db.read() as conn:
                known_sites = {s.code for s in site_directory(conn)}
            if site not in known_sites:
                err_console.print(f"no site {site!r}: add it first (dicomvault sites add {site})")
                raise typer.Exit(1)
        registry.add(db, registry.KnownAE(title, host, port, tls, site, store, query, retrieve))
    console.print(f"{title} added")


@aets_app.command("list")
def list_aets(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """List the known peers."""
    with open_database(config, data_dir) as db:
        known = registry.all_known(db)
    table = Table("AE title", "host", "port", "TLS", "site", "store", "query", "retrieve")
    for ae in known:
        yes = ["yes" if f else "no" for f in (ae.tls, ae.may_store, ae.may_query, ae.may_retrieve)]
        table.add_row(
            ae.ae_title, ae.host or "any", str(ae.port or ""), yes[0], ae.site or "", *yes[1:]
        )
    console.print(table)


@aets_app.command("remove")
def remove(
    ae_title: Annotated[str, typer.Argument(help="The AE title to forget.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Remove a peer (and its routes); exit status 1 if it was not known."""
    with open_database(config, data_dir) as db:
        removed = registry.remove(db, ae_title.strip())
    if not removed:
        err_console.print(f"{ae_title} is not a known AE", markup=False)
        raise typer.Exit(1)
    console.print(f"{ae_title} removed")


@routes_app.command("add")
def route_add(
    from_aet: Annotated[str, typer.Argument(help="Forward what this AE sends ...")],
    to_aet: Annotated[str, typer.Argument(help="... to this known AE.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Forward every instance received from FROM_AET to TO_AET."""
    source, target = _title(from_aet), _title(to_aet)
    with open_database(config, data_dir) as db:
        destination = registry.find(db, target)
        if destination is None or destination.host is None or destination.port is None:
            err_console.print(
                f"{target} is not a known AE with a host and port: "
                f"dicomvault aets add {target} --host HOST --port PORT",
                markup=False,
            )
            raise typer.Exit(1)
        route_id = registry.add_route(db, source, target)
    console.print(f"route {route_id}: {source} -> {target}")


@routes_app.command("list")
def route_list(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """List the routing rules."""
    with open_database(config, data_dir) as db:
        routes = registry.all_routes(db)
    table = Table("id", "from", "to")
    for route in routes:
        table.add_row(str(route.id), route.from_aet, route.to_aet)
    console.print(table)


@routes_app.command("remove")
def route_remove(
    route_id: Annotated[int, typer.Argument(help="The rule's id (dicomvault routes list).")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Remove a routing rule; exit status 1 if there was none of that id."""
    with open_database(config, data_dir) as db:
        removed = registry.remove_route(db, route_id)
    if not removed:
        err_console.print(f"no route {route_id}")
        raise typer.Exit(1)
    console.print(f"route {route_id} removed")


def send(
    uid: Annotated[str, typer.Argument(help="Study Instance UID (or, with --series, its study).")],
    to: Annotated[str, typer.Option("--to", help="The known AE to send to.")],
    series: Annotated[str | None, typer.Option(help="Send only this series of the study.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until the job has run, and report.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 600,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Send a study or series to a known AE, as a durable job (retried on failure).

    The job is run by the archive's workers (`dicomvault serve` or `dicomvault
    worker`); with --wait (the default) this command waits for its outcome.
    """
    from dicomvault import jobs
    from dicomvault.dimse.routing import SEND_JOB
    from dicomvault.errors import NotFound
    from dicomvault.jobs.queue import get_job
    from dicomvault.retrieve import find_instances

    target = _title(to)
    with open_database(config, data_dir) as db:
        known = registry.find(db, target)
        if known is None or known.host is None or known.port is None:
            err_console.print(f"{target} is not a known AE with a host and port", markup=False)
            raise typer.Exit(1)
        try:
            count = len(find_instances(db, uid, series))
        except NotFound as exc:
            err_console.print(f"error: {exc}", markup=False)
            raise typer.Exit(1) from exc
        payload = {"to": target, "study_uid": uid, "series_uid": series}
        with db.write() as conn:
            job_id = jobs.enqueue(conn, SEND_JOB, payload)
        console.print(f"job {job_id}: send {count} instances to {target}")
        if not wait:
            return
        deadline = time.monotonic() + timeout
        with console.status(f"waiting for job {job_id} (run by dicomvault serve or worker)"):
            while time.monotonic() < deadline:
                job = get_job(db, job_id)
                if job is None or job.state in ("done", "dead"):
                    break
                time.sleep(0.5)
    if job is None or job.state == "done":
        console.print(f"sent {count} instances to {target}")
        return
    if job.state == "dead":
        err_console.print(f"job {job_id} failed: {job.last_error}", markup=False)
        raise typer.Exit(1)
    err_console.print(
        f"job {job_id} is still {job.state} (last error: {job.last_error or 'none'}); "
        "it keeps being retried: dicomvault jobs show " + str(job_id),
        markup=False,
    )
    raise typer.Exit(3)
