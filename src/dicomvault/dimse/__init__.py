"""The DIMSE door: the archive as a DICOM network node (pynetdicom), next to DICOMweb.

`DimseServer` is loaded on first use: `index.schema` imports `dimse.tables`, and
importing the server (pynetdicom, the archive) from there would be circular.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicomvault.dimse.server import DimseServer

__all__ = ["DimseServer"]


def __getattr__(name: str) -> Any:
    if name == "DimseServer":
        from dicomvault.dimse.server import DimseServer

        return DimseServer
    raise AttributeError(name)
