"""Transfer syntaxes the archive can store, serve and transcode to, with media types.

Named through pydicom's UID constants (never bare strings in logic).
"""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

__all__ = [
    "NATIVE_SYNTAXES",
    "TRANSCODE_TARGETS",
    "frame_media_type",
    "is_native",
]

NATIVE_SYNTAXES = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    }
)

# What WADO-RS can transcode a stored instance to when a client asks for it.
TRANSCODE_TARGETS = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless, RLELossless, JPEG2000Lossless}
)

_FRAME_MEDIA_TYPES: dict[str, str] = {
    JPEGBaseline8Bit: "image/jpeg",
    JPEGExtended12Bit: "image/jpeg",
    JPEGLosslessSV1: "image/jpeg",
    JPEGLSLossless: "image/jls",
    JPEGLSNearLossless: "image/jls",
    JPEG2000Lossless: "image/jp2",
    JPEG2000: "image/jp2",
    RLELossless: "image/dicom-rle",
}


def is_native(transfer_syntax: str) -> bool:
    """True when pixel data in this syntax is uncompressed."""
    return UID(transfer_syntax) in NATIVE_SYNTAXES


def frame_media_type(transfer_syntax: str) -> str:
    """The media type of one frame of pixel data encoded in `transfer_syntax`."""
    if is_native(transfer_syntax):
        return "application/octet-stream"
    return _FRAME_MEDIA_TYPES.get(transfer_syntax, "application/octet-stream")
