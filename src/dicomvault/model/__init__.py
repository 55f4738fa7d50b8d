"""Pure values of the DICOM domain: UIDs, levels, transfer syntaxes. No I/O."""

from dicomvault.model.levels import Level
from dicomvault.model.uids import is_valid_uid, require_uid

__all__ = ["Level", "is_valid_uid", "require_uid"]
