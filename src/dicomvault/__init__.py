"""dicomvault: a DICOM archive over object storage and a queryable index.

The package is layered (see the README's "Code map"): the CLI starts doors
(DICOMweb, later DIMSE), doors call services (`ingest`, `query`), services use
adapters (`storage`, `index`) and pure values (`model`). Nothing is created at
import time: settings, engines and stores are built by `dicomvault.app_context`.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
