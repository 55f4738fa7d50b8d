"""`dicomvault sites`, `dicomvault users` and `dicomvault audit`: manage who may do what,
and read the audit trail."""

from __future__ import annotations

import getpass
import json
import os
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from dicomvault.access import accounts, audit
from dicomvault.access.policy import Role
from dicomvault.access.sinks import Auditor, open_sink
from dicomvault.cli.common import (
    ConfigOption,
    DataDirOption,
    console,
    err_console,
    open_database,
    settings_from,
)
from dicomvault.index.db import Database

__all__ = ["audit_app", "sites_app", "users_app"]

sites_app = typer.Typer(
    help="Sites (hospitals, centers) that studies belong to.", no_args_is_help=True
)
users_app = typer.Typer(help="Local users, their roles and API tokens.", no_args_is_help=True)
audit_app = typer.Typer(help="Check and search the audit trail.", no_args_is_help=True)

PASSWORD_ENV = "DICOMVAULT_NEW_PASSWORD"  # noqa: S105 -- the variable name, not a password


def _database(config: Path | None, data_dir: Path | None) -> AbstractContextManager[Database]:
    return open_database(config, data_dir, errors=(accounts.AccountError,))


@sites_app.command("add")
def sites_add(
    code: Annotated[str, typer.Argument(help="Short site code, e.g. RAJ.")],
    name: Annotated[str, typer.Option(help="Full name of the site.")] = "",
    organization: Annotated[str, typer.Option(help="The organization the site belongs to.")] = "",
    share: Annotated[
        bool,
        typer.Option(
            "--share/--no-share",
            help="Let the other sites of the organization read this site's studies.",
        ),
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Add a site."""
    with _database(config, data_dir) as db:
        accounts.add_site(db, code, name=name, organization=organization, org_shared=share)
    console.print(f"site {code} added")


@sites_app.command("list")
def sites_list(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """List the sites."""
    with _database(config, data_dir) as db:
        rows = accounts.list_sites(db)
    table = Table("code", "name", "organization", "shared in organization")
    for row in rows:
        table.add_row(
            str(row["code"]), str(row["name"]), str(row["organization"]), str(row["org_shared"])
        )
    console.print(table)


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="User name.")],
    role: Annotated[
        str, typer.Option(help="admin, radiologist, technologist, referrer/viewer or service.")
    ],
    site: Annotated[str | None, typer.Option(help="Home site (an admin may have none).")] = None,
    no_password: Annotated[
        bool, typer.Option("--no-password", help="No password: API tokens only (services).")
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Add a user. The password is asked for, or read from DICOMVAULT_NEW_PASSWORD."""
    try:
        parsed = Role.parse(role)
    except ValueError as exc:
        err_console.print(f"error: {exc}", markup=False)
        raise typer.Exit(2) from exc
    password = None
    if not no_password:
        password = os.environ.get(PASSWORD_ENV) or getpass.getpass(f"password for {name}: ")
    with _database(config, data_dir) as db:
        accounts.add_user(db, name, role=parsed, site=site, password=password)
    console.print(f"user {name} added ({parsed.value}, site {site or 'all'})")


@users_app.command("list")
def users_list(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """List the users."""
    with _database(config, data_dir) as db:
        found = accounts.list_users(db)
    table = Table("name", "role", "site", "disabled")
    for user in found:
        table.add_row(user.name, user.role.value, user.site or "(all)", str(user.disabled))
    console.print(table)


@users_app.command("disable")
def users_disable(
    name: Annotated[str, typer.Argument(help="User name.")],
    enable: Annotated[bool, typer.Option("--enable", help="Enable the user again.")] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Disable a user: their password and every token stop working at once."""
    with _database(config, data_dir) as db:
        accounts.set_disabled(db, name, not enable)
    console.print(f"user {name} {'enabled' if enable else 'disabled'}")


@users_app.command("token")
def users_token(
    name: Annotated[str, typer.Argument(help="User name.")],
    days: Annotated[
        float | None, typer.Option(help="Expire after this many days (default: never).")
    ] = None,
    label: Annotated[str, typer.Option(help="What the token is for.")] = "api",
    revoke: Annotated[
        int | None, typer.Option(help="Revoke the token with this id instead of issuing one.")
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Issue an API token for a user (printed once), or revoke one with --revoke ID."""
    with _database(config, data_dir) as db:
        if revoke is not None:
            accounts.revoke_token(db, revoke)
            console.print(f"token {revoke} revoked")
            return
        lifetime = timedelta(days=days) if days is not None else None
        issued = accounts.issue_token(db, name, name=label, lifetime=lifetime)
    expires = issued.expires_at.isoformat() if issued.expires_at else "never"
    err_console.print(f"token {issued.id} for {name}, expires {expires}; shown only now:")
    typer.echo(issued.secret)


@audit_app.command("verify")
def audit_verify(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Check the hash chain of the whole audit trail; exit 1 if a record was changed or
    deleted."""
    with _database(config, data_dir) as db:
        total = audit.count(db)
        with Progress(
            TextColumn("verifying audit trail"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err_console,
            transient=True,
        ) as progress:
            task = progress.add_task("audit", total=total)
            checked, problems = audit.verify(db, lambda n: progress.advance(task, n))
    for problem in problems:
        where = f"record {problem.seq}" if problem.seq is not None else "trail"
        console.print(f"TAMPERED {where}: {problem.reason}", markup=False)
    if problems:
        raise typer.Exit(1)
    console.print(f"audit trail intact: {checked} records")


@audit_app.command("search")
def audit_search(
    user: Annotated[str | None, typer.Option(help="Actor: user name, token or AE title.")] = None,
    patient: Annotated[str | None, typer.Option(help="Patient ID.")] = None,
    study: Annotated[str | None, typer.Option(help="Study Instance UID.")] = None,
    action: Annotated[str | None, typer.Option(help="query, retrieve, store, login, ...")] = None,
    since: Annotated[datetime | None, typer.Option(help="From this time (ISO 8601).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Up to this time (ISO 8601).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most records printed.")] = 1000,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Print matching audit records as JSON lines, oldest first."""
    with _database(config, data_dir) as db:
        rows = audit.search(
            db,
            actor=user,
            patient_id=patient,
            study_uid=study,
            action=action,
            since=since,
            until=until,
            limit=limit,
        )
        # Reading the trail is itself an access to patient data (DCM 110101).
        filters = {"user": user, "patient": patient, "study": study, "action": action}
        sink = open_sink(settings_from(config, data_dir=data_dir).audit_sink)
        Auditor(db, sink).record(
            audit.AuditEvent(
                actor=getpass.getuser(),
                actor_kind="local",
                door="cli",
                action=audit.AuditAction.AUDIT_USED,
                outcome=audit.Outcome.SUCCESS,
                patient_id=patient,
                study_uid=study,
                detail={
                    "filters": {k: v for k, v in filters.items() if v is not None},
                    "records": len(rows),
                },
            ),
        )
    for row in rows:
        typer.echo(json.dumps(audit.as_json(row), sort_keys=True))
