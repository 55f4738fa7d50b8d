"""The DIMSE door: the archive as a DICOM network node (pynetdicom), next to DICOMweb."""

from dicomvault.dimse.server import DimseServer

__all__ = ["DimseServer"]
