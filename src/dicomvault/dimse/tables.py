"""The tables of the DIMSE door, on the index's one `metadata`.

`index/schema.py` imports this module, so migrations and the schema comparison
test see these tables like every other.

- `aets`: the known-AE registry. A peer's AE title, where it listens (host, port,
  TLS: where C-MOVE and `dicomvault send` deliver, and the only address it may call
  from when a host is given), the site its instances belong to, and what it may do.
- `routes`: auto-routing rules: instances received from `from_aet` are forwarded to
  `to_aet` by durable jobs.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Integer, String, Table, false, func, true

from dicomvault.index.schema import Id, metadata

__all__ = ["aets", "routes"]

aets = Table(
    "aets",
    metadata,
    Column("ae_title", String(16), primary_key=True),
    Column("host", String(255)),
    Column("port", Integer),
    Column("tls", Boolean, nullable=False, server_default=false()),
    Column("site", String(64)),
    Column("may_store", Boolean, nullable=False, server_default=true()),
    Column("may_query", Boolean, nullable=False, server_default=true()),
    Column("may_retrieve", Boolean, nullable=False, server_default=true()),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

routes = Table(
    "routes",
    metadata,
    Column("id", Id, primary_key=True),
    Column("from_aet", String(16), nullable=False, index=True),
    Column("to_aet", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
