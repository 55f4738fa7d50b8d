"""UID validation (PS3.5 9.1): digits and dots, no leading zeros, at most 64 chars.

UIDs end up in URLs and in log lines, so anything else (`../`, NUL, spaces) is
refused at the door rather than escaped later.
"""

from __future__ import annotations

import re

from dicomvault.errors import InvalidUID

__all__ = ["is_valid_uid", "require_uid"]

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
MAX_UID_LENGTH = 64


def is_valid_uid(value: object) -> bool:
    """True when `value` is a syntactically valid DICOM UID."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_UID_LENGTH
        and _UID.fullmatch(value) is not None
    )


def require_uid(value: object, what: str) -> str:
    """Return `value` as a UID or raise InvalidUID naming `what` and the problem."""
    if value is None or value == "":
        raise InvalidUID(f"{what} is missing")
    if not isinstance(value, str):
        raise InvalidUID(f"{what} is not a single UID")
    if len(value) > MAX_UID_LENGTH:
        raise InvalidUID(f"{what} is longer than {MAX_UID_LENGTH} characters")
    if _UID.fullmatch(value) is None:
        raise InvalidUID(f"{what} {value[:80]!r} is not a valid UID (digits and dots only)")
    return value
