"""Where an instance came from: the door, and who or what sent it.

Every door builds an `Origin` and hands it to the one ingest function, which
records it with the instance (calling AE, site) and in the `instance.stored`
event, so that access control, audit and routing rules read one shape whatever
the door.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Door", "Origin"]


class Door(StrEnum):
    DICOMWEB = "dicomweb"
    DIMSE = "dimse"
    IMPORT = "import"
    INBOX = "inbox"
    API = "api"  # called from Python, e.g. tests and scripts


@dataclass(frozen=True, slots=True)
class Origin:
    door: Door = Door.API
    site: str | None = None  # the site code the instance belongs to, when known
    calling_aet: str | None = None  # DIMSE: the peer's AE title
    user: str | None = None  # the authenticated user or token name, when any
    address: str | None = None  # the peer's network address, when any
