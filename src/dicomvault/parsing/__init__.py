"""Reading DICOM files: structural validation (`layout`) and the header (`header`)."""

from dicomvault.parsing.header import Header, parse_header
from dicomvault.parsing.layout import Layout, read_layout

__all__ = ["Header", "Layout", "parse_header", "read_layout"]
