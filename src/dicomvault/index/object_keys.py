"""Where key rotation keeps re-wrapped data keys: the `object_keys` table.

Implements storage.crypto.KeyOverrides over the index, so the storage layer stays
free of SQL and the index stays free of cryptography.
"""

from __future__ import annotations

import base64

from sqlalchemy import delete, select

from dicomvault.access.tables import object_keys
from dicomvault.index.db import Database
from dicomvault.storage.crypto import WrappedKey

__all__ = ["IndexKeyOverrides"]


class IndexKeyOverrides:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, key: str) -> WrappedKey | None:
        with self.db.read() as conn:
            row = conn.execute(
                select(object_keys.c.key_id, object_keys.c.wrapped).where(object_keys.c.key == key)
            ).first()
        return WrappedKey(row.key_id, base64.b64decode(row.wrapped)) if row else None

    def put(self, key: str, wrapped: WrappedKey) -> None:
        with self.db.write() as conn:  # one transaction: the old row or the new, never none
            conn.execute(delete(object_keys).where(object_keys.c.key == key))
            conn.execute(
                object_keys.insert().values(
                    key=key,
                    key_id=wrapped.key_id,
                    wrapped=base64.b64encode(wrapped.wrapped).decode(),
                )
            )
