"""Streaming audit records out as JSON lines: to stdout, a file, or syslog (RFC 5424).

The index keeps the authoritative, hash-chained trail; a sink is a copy for a SIEM
(Splunk, Elastic, ...). A sink that fails is logged and does not fail the request:
the record is already committed in the index.

`Auditor` is what doors call: it appends the record and hands it to the sink.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from dicomvault.access import audit
from dicomvault.index.db import Database

__all__ = ["Auditor", "FileSink", "Sink", "StdoutSink", "SyslogSink", "open_sink", "rfc5424"]

log = logging.getLogger(__name__)

_FACILITY_AUTHPRIV = 10  # RFC 5424 facility 10: security/authorization messages
_INFO, _WARNING = 6, 4


class Sink(Protocol):
    def emit(self, line: dict[str, Any]) -> None: ...


def _text(line: dict[str, Any]) -> str:
    return json.dumps(line, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class StdoutSink:
    def emit(self, line: dict[str, Any]) -> None:
        sys.stdout.write(_text(line) + "\n")
        sys.stdout.flush()


class FileSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def emit(self, line: dict[str, Any]) -> None:
        data = (_text(line) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)


def rfc5424(line: dict[str, Any], hostname: str | None = None) -> bytes:
    """One syslog message (RFC 5424): <PRI>1 TIMESTAMP HOST APP PROCID MSGID - JSON."""
    severity = _INFO if line.get("outcome") == "success" else _WARNING
    pri = _FACILITY_AUTHPRIV * 8 + severity
    stamp = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    host = (hostname or socket.gethostname() or "-")[:255]
    return (
        f"<{pri}>1 {stamp} {host} dicomvault {os.getpid()} audit - ".encode()
        + b"\xef\xbb\xbf"  # BOM: the MSG part is UTF-8 (RFC 5424 6.4)
        + _text(line).encode()
    )


class SyslogSink:
    """RFC 5424 messages over UDP (RFC 5426), one datagram per record."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def emit(self, line: dict[str, Any]) -> None:
        self._sock.sendto(rfc5424(line), self.address)


def open_sink(url: str | None) -> Sink | None:
    """The sink named by the `audit_sink` setting (None: the index only)."""
    if not url:
        return None
    if url == "stdout":
        return StdoutSink()
    parts = urlsplit(url)
    if parts.scheme == "file":
        return FileSink(Path(unquote(parts.path)))
    if parts.scheme == "syslog":
        return SyslogSink(parts.hostname or "127.0.0.1", parts.port or 514)
    raise ValueError(f"audit_sink {url!r}: use stdout, file:///path or syslog://host:port")


class Auditor:
    """Records audit events: in the index's chain first, then a copy to the sink."""

    def __init__(self, db: Database, sink: Sink | None = None) -> None:
        self.db = db
        self.sink = sink

    def record(self, event: audit.AuditEvent) -> None:
        row = audit.append(self.db, event)
        if self.sink is not None:
            try:
                self.sink.emit(audit.as_json(row))
            except Exception:  # the trail is committed; a SIEM outage must not stop reads
                log.exception("audit sink failed for record %s", row["seq"])
