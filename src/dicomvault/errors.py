"""The exception hierarchy of the archive.

    DicomVaultError
    ├── InvalidInstance          the bytes are not an acceptable DICOM instance (-> 400 / 0xC000)
    │   └── InvalidUID           a UID is missing, malformed or unsafe
    ├── DuplicateConflict        different bytes under a stored SOP Instance UID (-> 409 / 0xA900)
    ├── StudyMismatch            an instance sent to /studies/{uid} belongs to another study
    ├── NotFound                 no such study / series / instance / frame (-> 404)
    ├── InvalidQuery             a QIDO / C-FIND request that cannot be answered (-> 400)
    ├── NotAcceptable            no representation the client accepts (-> 406)
    └── StorageError             the object store failed (-> 503 / 0xA700)
        ├── ObjectNotFound       an object key that does not exist
        └── ChecksumMismatch     stored bytes do not match their recorded SHA-256

Doors translate these to their protocol's status codes; services never return
status codes themselves.
"""

from __future__ import annotations

__all__ = [
    "ChecksumMismatch",
    "DicomVaultError",
    "DuplicateConflict",
    "InvalidInstance",
    "InvalidQuery",
    "InvalidUID",
    "NotAcceptable",
    "NotFound",
    "ObjectNotFound",
    "StorageError",
    "StudyMismatch",
]


class DicomVaultError(Exception):
    """Base of every error the archive raises on purpose."""


class InvalidInstance(DicomVaultError):
    """The submitted bytes are not an acceptable DICOM instance; nothing was stored."""


class InvalidUID(InvalidInstance):
    """A required UID is missing, malformed or unsafe."""


class DuplicateConflict(DicomVaultError):
    """Different bytes arrived under a SOP Instance UID that is already stored."""


class StudyMismatch(DicomVaultError):
    """An instance posted to a study URL belongs to another study."""


class NotFound(DicomVaultError):
    """The requested study, series, instance, frame or attribute does not exist."""


class InvalidQuery(DicomVaultError):
    """A query that cannot be answered as asked."""


class NotAcceptable(DicomVaultError):
    """None of the representations the client accepts can be produced."""


class StorageError(DicomVaultError):
    """The object store failed; the operation may succeed when retried."""


class ObjectNotFound(StorageError):
    """An object key that does not exist in the store."""


class ChecksumMismatch(StorageError):
    """Bytes read back do not match the SHA-256 recorded when they were written."""
