"""The known-AE registry and the auto-routing rules: rows of `aets` and `routes`.

A known AE says where a peer listens (where C-MOVE and `dicomvault send` deliver),
the site its instances belong to, and what it may do; `policy.py` makes the
decisions, this module only reads and writes rows.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, fields

from sqlalchemy import delete, select

from dicomvault.dimse.tables import aets, routes
from dicomvault.index.db import Database

__all__ = [
    "KnownAE",
    "Route",
    "add",
    "add_route",
    "addresses",
    "all_known",
    "all_routes",
    "find",
    "remove",
    "remove_route",
    "routes_from",
    "valid_ae_title",
]


@dataclass(frozen=True, slots=True)
class KnownAE:
    ae_title: str
    host: str | None = None  # None: may call from anywhere; cannot be a destination
    port: int | None = None
    tls: bool = False
    site: str | None = None
    may_store: bool = True
    may_query: bool = True
    may_retrieve: bool = True


@dataclass(frozen=True, slots=True)
class Route:
    id: int
    from_aet: str
    to_aet: str


_AE_COLUMNS = [aets.c[f.name] for f in fields(KnownAE)]


def valid_ae_title(title: str) -> bool:
    """PS3.5 AE: 1-16 characters of the default repertoire, no backslash, not all spaces."""
    return 0 < len(title) <= 16 and title.strip() != "" and title.isascii() and "\\" not in title


def add(db: Database, ae: KnownAE) -> None:
    """Add `ae`, or replace the entry of the same AE title."""
    values = {f.name: getattr(ae, f.name) for f in fields(KnownAE)}
    with db.write() as conn:
        conn.execute(delete(aets).where(aets.c.ae_title == ae.ae_title))
        conn.execute(aets.insert().values(values))


def remove(db: Database, ae_title: str) -> bool:
    """Forget `ae_title` and the routes to and from it; False when it was not known."""
    with db.write() as conn:
        conn.execute(
            delete(routes).where((routes.c.from_aet == ae_title) | (routes.c.to_aet == ae_title))
        )
        return conn.execute(delete(aets).where(aets.c.ae_title == ae_title)).rowcount > 0


def find(db: Database, ae_title: str) -> KnownAE | None:
    with db.read() as conn:
        row = conn.execute(select(*_AE_COLUMNS).where(aets.c.ae_title == ae_title)).first()
    return None if row is None else KnownAE(*row)


def all_known(db: Database) -> list[KnownAE]:
    with db.read() as conn:
        rows = conn.execute(select(*_AE_COLUMNS).order_by(aets.c.ae_title)).all()
    return [KnownAE(*row) for row in rows]


def addresses(host: str) -> set[str]:
    """The IP addresses `host` names (itself if it is one); empty if it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return set()
    return {str(info[4][0]) for info in infos}


def add_route(db: Database, from_aet: str, to_aet: str) -> int:
    """A rule forwarding what `from_aet` sends to `to_aet`; its id (an existing one's if
    the same rule is there already)."""
    with db.write() as conn:
        existing = conn.execute(
            select(routes.c.id).where(routes.c.from_aet == from_aet, routes.c.to_aet == to_aet)
        ).scalar()
        if existing is not None:
            return int(existing)
        return int(
            conn.execute(
                routes.insert().values(from_aet=from_aet, to_aet=to_aet).returning(routes.c.id)
            ).scalar_one()
        )


def remove_route(db: Database, route_id: int) -> bool:
    with db.write() as conn:
        return conn.execute(delete(routes).where(routes.c.id == route_id)).rowcount > 0


def all_routes(db: Database) -> list[Route]:
    with db.read() as conn:
        rows = conn.execute(
            select(routes.c.id, routes.c.from_aet, routes.c.to_aet).order_by(routes.c.id)
        ).all()
    return [Route(*row) for row in rows]


def routes_from(db: Database, from_aet: str) -> list[Route]:
    with db.read() as conn:
        rows = conn.execute(
            select(routes.c.id, routes.c.from_aet, routes.c.to_aet)
            .where(routes.c.from_aet == from_aet)
            .order_by(routes.c.id)
        ).all()
    return [Route(*row) for row in rows]
