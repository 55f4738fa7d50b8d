"""HTTP byte ranges (RFC 9110 14) on single-part bulk data: a viewer or a script can
fetch part of a large value (a slice of a multi-frame volume, a resumed download)
without reading the rest.

One range per request is served (206 with Content-Range); a request for several
ranges is answered whole (200), which RFC 9110 allows; an unsatisfiable range is
416 with the value's length.
"""

from __future__ import annotations

import re

from fastapi.responses import JSONResponse

__all__ = ["RangeNotSatisfiable", "content_range", "requested_range"]

_SPEC = re.compile(r"bytes=(\d*)-(\d*)")


def requested_range(header: str | None, total: int) -> tuple[int, int] | None:
    """[start, end) of `total` bytes that `header` asks for; None: send everything.
    RangeNotSatisfiable when it lies wholly outside them."""
    if header is None:
        return None
    spec = header.strip().replace(" ", "")
    if "," in spec:
        return None
    match = _SPEC.fullmatch(spec)
    if match is None:
        return None  # another unit, or malformed: ignored, as RFC 9110 says
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        length = int(last)
        if length == 0 or total == 0:
            raise _unsatisfiable(total)
        return max(0, total - length), total
    start = int(first)
    end = total if not last else min(int(last) + 1, total)
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= total:
        raise _unsatisfiable(total)
    return start, end


class RangeNotSatisfiable(Exception):
    """The range asked for lies outside the value (416)."""

    def __init__(self, total: int) -> None:
        super().__init__(f"the range asked for is outside the {total} bytes of the value")
        self.total = total

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": str(self)},
            status_code=416,
            headers={"Content-Range": f"bytes */{self.total}"},
        )


def content_range(start: int, end: int, total: int) -> dict[str, str]:
    """The headers of a 206 answer carrying bytes [start, end) of `total`."""
    return {
        "Content-Range": f"bytes {start}-{end - 1}/{total}",
        "Content-Length": str(end - start),
        "Accept-Ranges": "bytes",
    }


def _unsatisfiable(total: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(total)
