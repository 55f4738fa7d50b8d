"""Damage a stored object behind the archive's back, as a failing disk or bucket would."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from dicomvault.archive import Archive
from dicomvault.index.schema import objects
from dicomvault.storage import LocalStore

__all__ = ["rewrite_object"]


def rewrite_object(archive: Archive, sop: str, change: Callable[[bytearray], None]) -> None:
    """Apply `change` to the bytes of the object of instance `sop`, in place in the store."""
    with archive.db.read() as conn:
        key = conn.execute(select(objects.c.key).where(objects.c.sop_uid == sop)).scalar_one()
    data = bytearray(b"".join(archive.store.iter_bytes(key)))
    change(data)
    archive.store.delete(key)
    if isinstance(archive.store, LocalStore):
        (archive.store.root / key).write_bytes(bytes(data))
    else:
        archive.store.put(key, [bytes(data)])
