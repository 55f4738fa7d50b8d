"""Response helpers shared by the DICOMweb routes: DICOM JSON bodies, gzip, the root URL.

DICOM JSON bodies are written with orjson (`parsing.dicom_json.dicom_json_bytes`).
"""

from __future__ import annotations

import gzip
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from dicomvault.parsing.dicom_json import dicom_json_bytes

__all__ = [
    "DICOMWEB_ROOT",
    "DICOM_JSON",
    "dicom_json_bytes",
    "dicom_json_response",
    "json_text_response",
    "root_url",
]

DICOMWEB_ROOT = "/dicom-web"  # where the DICOMweb routes are mounted
DICOM_JSON = "application/dicom+json"
GZIP_MIN_BYTES = 1024


def root_url(request: Request) -> str:
    """The absolute DICOMweb root (`.../dicom-web`): under `Settings.public_url` when set
    (a proxy in front may not pass the Host the client used), else as the request came."""
    public_url = request.app.state.archive.settings.public_url
    if public_url:
        return f"{public_url.rstrip('/')}/dicom-web"
    # As `url_for` would make it (under the proxy's root_path too), without searching
    # every route by name on each request.
    return str(request.base_url).rstrip("/") + DICOMWEB_ROOT


def json_text_response(text: str | bytes, request: Request, status_code: int = 200) -> Response:
    """A DICOM JSON body, gzip-compressed when the client accepts it and it is worth it."""
    body = text.encode() if isinstance(text, str) else text
    headers = {"Vary": "Accept-Encoding"}
    if len(body) >= GZIP_MIN_BYTES and "gzip" in request.headers.get("accept-encoding", ""):
        body = gzip.compress(body, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    return Response(body, status_code=status_code, media_type=DICOM_JSON, headers=headers)


def dicom_json_response(value: Any, request: Request, status_code: int = 200) -> Response:
    return json_text_response(dicom_json_bytes(value), request, status_code)
