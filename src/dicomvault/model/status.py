"""Named status and reason codes (PS3.7 C-STORE statuses, PS3.18 STOW-RS reasons)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["FailureReason"]


class FailureReason(IntEnum):
    """FailureReason (0008,1197) values a STOW-RS response and C-STORE statuses share."""

    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000
