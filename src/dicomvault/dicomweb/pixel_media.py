"""Accept negotiation for the pixel resources of WADO-RS: frames, bulk data, rendered images.

Frames and Pixel Data bulk data (PS3.18 8.7.3.3.2, 8.7.3.5) come either
uncompressed, as `application/octet-stream` in explicit VR little endian (the
default, what `*/*` or no Accept gets), or as stored when the stored data is
compressed and the client accepts that: `transfer-syntax=*`, or the matching
image media type (`image/jls`, `image/jp2`, ...) with no transfer syntax or the
stored one. Frames are never re-compressed into another syntax.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydicom.uid import ExplicitVRLittleEndian

from dicomvault.dicomweb.media import MediaRange, parse_accept
from dicomvault.errors import NotAcceptable
from dicomvault.model.transfer_syntax import frame_media_type, is_native
from dicomvault.render import JPEG, PNG

__all__ = [
    "OCTET_STREAM",
    "FrameEncoding",
    "PixelChoice",
    "negotiate_bulk",
    "negotiate_pixels",
    "negotiate_rendered",
    "part_content_type",
]

OCTET_STREAM = "application/octet-stream"
ANY_SYNTAX = "*"
_ANY = ("*/*", "multipart/*")


class FrameEncoding(StrEnum):
    NATIVE = "native"  # uncompressed, explicit VR little endian
    STORED = "stored"  # the stored compressed bytes


@dataclass(frozen=True, slots=True)
class PixelChoice:
    encoding: FrameEncoding
    multipart: bool


def _requested(media: MediaRange, single_part_ok: bool) -> tuple[str, bool] | None:
    """(the media type asked for each part, multipart?) of one Accept range, if it can apply."""
    if media.type == "multipart/related":
        return media.params.get("type", OCTET_STREAM).lower(), True
    if media.type in _ANY:
        return "*/*", True
    if single_part_ok and media.type in (OCTET_STREAM, "application/*"):
        return OCTET_STREAM, False
    return None


def _encoding(part: str, syntax: str | None, stored_syntax: str) -> FrameEncoding | None:
    wanted = MediaRange(part)
    native_ok = wanted.matches(OCTET_STREAM) and syntax in (
        None,
        ANY_SYNTAX,
        ExplicitVRLittleEndian,
    )
    if is_native(stored_syntax):
        return FrameEncoding.NATIVE if native_ok else None
    stored_media = frame_media_type(stored_syntax)
    if syntax == ANY_SYNTAX and (part == OCTET_STREAM or wanted.matches(stored_media)):
        return FrameEncoding.STORED
    if syntax in (None, stored_syntax) and part != "*/*" and wanted.matches(stored_media):
        return FrameEncoding.STORED
    return FrameEncoding.NATIVE if native_ok and syntax != ANY_SYNTAX else None


def negotiate_pixels(
    accept: str | None, stored_syntax: str, *, single_part_ok: bool = False
) -> PixelChoice:
    """How to send frames (or Pixel Data) stored in `stored_syntax`; NotAcceptable if no way."""
    for media in parse_accept(accept):
        requested = _requested(media, single_part_ok)
        if requested is None:
            continue
        part, multipart = requested
        encoding = _encoding(part, media.params.get("transfer-syntax"), stored_syntax)
        if encoding is None or (not multipart and encoding is FrameEncoding.STORED):
            continue
        return PixelChoice(encoding, multipart)
    offer = f'multipart/related; type="{OCTET_STREAM}" (uncompressed)'
    if not is_native(stored_syntax):
        offer += (
            f', or type="{frame_media_type(stored_syntax)}" with transfer-syntax '
            f"{stored_syntax} or * (as stored)"
        )
    raise NotAcceptable(f"these pixels are served as {offer}")


def part_content_type(encoding: FrameEncoding, stored_syntax: str) -> str:
    if encoding is FrameEncoding.NATIVE:
        return f"{OCTET_STREAM}; transfer-syntax={ExplicitVRLittleEndian}"
    return f"{frame_media_type(stored_syntax)}; transfer-syntax={stored_syntax}"


def negotiate_bulk(accept: str | None) -> bool:
    """True for a multipart/related answer, False for a bare octet stream; else NotAcceptable."""
    for media in parse_accept(accept):
        requested = _requested(media, single_part_ok=True)
        if requested is None or not MediaRange(requested[0]).matches(OCTET_STREAM):
            continue
        return requested[1]
    raise NotAcceptable(
        f'bulk data is served as multipart/related; type="{OCTET_STREAM}" or {OCTET_STREAM}'
    )


def negotiate_rendered(accept: str | None) -> str:
    """image/jpeg (the default) or image/png; NotAcceptable otherwise.

    `multipart/related; type=image/...` (how several rendered images are asked for)
    names the same choice.
    """
    for media in parse_accept(accept):
        if media.type in (JPEG, PNG):
            return media.type
        if media.type == "multipart/related":
            inner = media.params.get("type", JPEG).lower()
            if inner in (JPEG, PNG):
                return inner
            continue
        if media.type in ("image/*", "*/*"):
            return JPEG
    raise NotAcceptable(f"rendered images are served as {JPEG} or {PNG}")
