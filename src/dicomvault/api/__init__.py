"""The archive's own HTTP API beside DICOMweb (the change feed, ...)."""
