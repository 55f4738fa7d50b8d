"""The archive's running parts, built once from the settings and handed to every door.

`Archive.open` connects the index (upgrading its schema), opens the object store
and builds the services. Doors (the HTTP app, the CLI import, later DIMSE) take
an `Archive` and never build their own engines or stores.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomvault.access.authn import Authenticator
from dicomvault.access.sinks import Auditor, open_sink
from dicomvault.config import Settings
from dicomvault.index import migrate
from dicomvault.index.db import Database
from dicomvault.index.object_keys import IndexKeyOverrides
from dicomvault.ingest import Ingestor
from dicomvault.storage import ObjectStore, keyring_from_settings, open_store
from dicomvault.storage.crypto import EncryptedStore

__all__ = ["Archive"]


@dataclass
class Archive:
    settings: Settings
    db: Database
    store: ObjectStore
    ingestor: Ingestor
    authenticator: Authenticator
    auditor: Auditor

    @classmethod
    def open(cls, settings: Settings, *, upgrade: bool = True) -> Archive:
        db = Database(settings.effective_database_url)
        if upgrade:
            migrate.upgrade(db)
        store = open_store(settings)
        keyring = keyring_from_settings(settings)
        if keyring is not None:
            store = EncryptedStore(store, keyring, IndexKeyOverrides(db))
        return cls(
            settings=settings,
            db=db,
            store=store,
            ingestor=Ingestor(db, store, settings.duplicate_policy),
            authenticator=Authenticator(settings, db),
            auditor=Auditor(db, open_sink(settings.audit_sink)),
        )

    def close(self) -> None:
        self.db.dispose()
