"""Content-Type and Accept parsing for DICOMweb (media types with parameters)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MediaRange", "parse_accept", "parse_media_type"]


@dataclass(frozen=True)
class MediaRange:
    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    def matches(self, media_type: str) -> bool:
        if self.type in ("*/*", media_type):
            return True
        major = media_type.split("/")[0]
        return self.type == f"{major}/*"


def _split_unquoted(text: str, separator: str) -> list[str]:
    """Split on `separator` where it is not inside double quotes."""
    out: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == separator and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
    out.append("".join(current))
    return out


def parse_media_type(value: str) -> MediaRange:
    pieces = _split_unquoted(value, ";")
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        name, _, raw = piece.partition("=")
        name = name.strip().lower()
        raw = raw.strip().strip('"')
        if name == "q":
            try:
                q = float(raw)
            except ValueError:
                q = 0.0
        elif name:
            params[name] = raw
    return MediaRange(type=pieces[0].strip().lower(), params=params, q=q)


def parse_accept(header: str | None) -> list[MediaRange]:
    """Accept header ranges, best first; `*/*` when the header is absent or empty."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    pieces = [p for p in _split_unquoted(header, ",") if p.strip()]
    ranges = [parse_media_type(piece) for piece in pieces]
    return sorted((r for r in ranges if r.q > 0), key=lambda r: -r.q)
