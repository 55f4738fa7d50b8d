"""Pure values of the DICOM domain: UIDs, levels, transfer syntaxes, origins. No I/O."""

from dicomvault.model.levels import Level
from dicomvault.model.origin import Door, Origin
from dicomvault.model.uids import is_valid_uid, require_uid

__all__ = ["Door", "Level", "Origin", "is_valid_uid", "require_uid"]
