"""Query/retrieve levels shared by QIDO-RS and (later) C-FIND."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Level"]


class Level(StrEnum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    INSTANCE = "IMAGE"
