"""Inbox discovery on a local directory store by file-system events (inotify & co.).

A thread of the worker watches the inbox directory and queues an ingest job for
every file created or changed there, due once the file has settled (it may still
be being copied: the job itself postpones while it keeps changing). Listing
(`inbox.scan`) stays on as the safety net for events missed while no worker ran.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import TYPE_CHECKING

from dicomvault import jobs
from dicomvault.jobs.queue import now
from dicomvault.pipeline.inbox import INGEST
from dicomvault.storage import LocalStore

if TYPE_CHECKING:
    from dicomvault.archive import Archive

__all__ = ["start_watcher"]

log = logging.getLogger(__name__)


def start_watcher(archive: Archive, stop: threading.Event) -> threading.Thread | None:
    """Watch the inbox of a local store until `stop` is set (None: nothing to watch)."""
    store = archive.store
    prefix = archive.settings.inbox_prefix
    if not isinstance(store, LocalStore) or not prefix:
        return None
    folder = store.root / prefix
    folder.mkdir(parents=True, exist_ok=True)
    thread = threading.Thread(
        target=_watch, args=(archive, store, stop), daemon=True, name="inbox-watch"
    )
    thread.start()
    return thread


def _watch(archive: Archive, store: LocalStore, stop: threading.Event) -> None:
    from watchfiles import Change, watch

    prefix = archive.settings.inbox_prefix or ""
    settle = timedelta(seconds=archive.settings.inbox_settle_seconds)
    try:
        for changes in watch(store.root / prefix, stop_event=stop, rust_timeout=500):
            paths = [path for change, path in changes if change != Change.deleted]
            keys = []
            for path in paths:
                try:
                    key = store.root.joinpath(path).relative_to(store.root).as_posix()
                except ValueError:
                    continue
                if (store.root / key).is_file():
                    keys.append(key)
            if keys:
                with archive.db.write() as conn:
                    for key in keys:
                        jobs.enqueue(
                            conn, INGEST, {"key": key}, key=f"inbox:{key}", run_after=now() + settle
                        )
    except Exception:  # the watcher is a shortcut; listing still finds every file
        log.exception("inbox watcher stopped")
