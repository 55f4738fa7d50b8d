"""The change feed: every change of the archive, in order, by gap-free sequence number.

A change is an event of the event log (`index.eventlog`): `instance.stored`,
`instance.updated`, `instance.deleted` (when deletion exists), `study.ready`,
`study.updated`. Its `seq` is 1 for the first change and one more for each next
one, given in commit order, so a follower that has handled everything up to
`offset` asks for the changes after `offset` and misses nothing, across restarts
of either side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dicomvault.errors import InvalidQuery
from dicomvault.index.db import Database
from dicomvault.index.eventlog import events_after, last_seq

__all__ = ["MAX_LIMIT", "ChangePage", "read_changes"]

MAX_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class ChangePage:
    changes: list[dict[str, Any]]
    next_offset: int  # ask for the changes after this next
    last_seq: int  # the newest change that exists now

    def as_dict(self) -> dict[str, Any]:
        return {"changes": self.changes, "next_offset": self.next_offset, "last_seq": self.last_seq}


def read_changes(db: Database, offset: int, limit: int) -> ChangePage:
    """The changes with seq > `offset`, at most `limit` of them, oldest first."""
    if offset < 0:
        raise InvalidQuery(f"offset={offset}: give 0 or a sequence number already seen")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidQuery(f"limit={limit}: give a number from 1 to {MAX_LIMIT}")
    newest = last_seq(db)
    changes = events_after(db, offset, limit)
    next_offset = changes[-1]["seq"] if changes else offset
    return ChangePage(changes=changes, next_offset=next_offset, last_seq=newest)
