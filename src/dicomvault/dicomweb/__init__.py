"""The DICOMweb door: STOW-RS, QIDO-RS and WADO-RS routes over the archive's services."""
