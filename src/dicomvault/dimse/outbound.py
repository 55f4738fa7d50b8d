"""Sending to DICOM peers: what C-MOVE, `dicomvault send`, auto-routing and storage
commitment reports share.

- `connect_options`: how to reach a known AE (DICOM TLS when its registry row says
  so, verified against `tls_ca_file`; TCP_NODELAY on the socket).
- `proposed_contexts`: presentation contexts for a set of instances: each SOP class
  in its stored transfer syntaxes, one context each (so the peer cannot pick a
  lesser syntax over them), and uncompressed.
- `fitted_dataset`: an instance as the peer accepted it: as stored, or decompressed
  when the peer took only an uncompressed syntax for its SOP class. An object that
  cannot be read (checksum mismatch, missing) becomes a dataset that cannot be sent,
  which pynetdicom counts as a failed sub-operation, naming its SOP Instance UID.
- `send`: C-STORE a list of instances over one association, with a progress callback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.presentation import PresentationContext, build_context

from dicomvault.archive import Archive
from dicomvault.dimse.connections import tune_socket
from dicomvault.dimse.registry import KnownAE
from dicomvault.dimse.store import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from dicomvault.dimse.tls import client_context
from dicomvault.errors import DicomVaultError, StorageError
from dicomvault.model.transfer_syntax import is_native
from dicomvault.retrieve import StoredInstance, load_dataset, transcode

__all__ = [
    "SendReport",
    "accepted_syntaxes",
    "connect_options",
    "fitted_dataset",
    "proposed_contexts",
    "send",
]

log = logging.getLogger(__name__)

NATIVE = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
_MAX_CONTEXTS = 128  # presentation contexts one association may propose (PS3.8)
_WARNINGS = {0xB000, 0xB006, 0xB007, 0x0107, 0x0116}


def _no_delay(event: Any) -> None:
    tune_socket(event.assoc.dul.socket.socket)


def connect_options(archive: Archive, known: KnownAE) -> dict[str, Any]:
    """Keyword arguments for `AE.associate` to reach `known`."""
    options: dict[str, Any] = {"evt_handlers": [(evt.EVT_CONN_OPEN, _no_delay)]}
    if known.tls:
        options["tls_args"] = (client_context(archive.settings), known.host)
    return options


def proposed_contexts(instances: Iterable[StoredInstance]) -> list[PresentationContext]:
    """Presentation contexts to send `instances`, at most 128."""
    stored: dict[str, set[str]] = {}
    for instance in instances:
        stored.setdefault(instance.sop_class_uid, set()).add(instance.transfer_syntax)
    contexts = []
    for sop_class, transfer_syntaxes in sorted(stored.items()):
        for ts in sorted(transfer_syntaxes - set(NATIVE)):
            contexts.append(build_context(sop_class, ts))
        contexts.append(build_context(sop_class, list(NATIVE)))
    return contexts[:_MAX_CONTEXTS]


def accepted_syntaxes(contexts: Iterable[PresentationContext]) -> dict[str, set[str]]:
    """SOP class UID -> the transfer syntaxes the peer accepted for it."""
    syntaxes: dict[str, set[str]] = {}
    for context in contexts:
        if context.abstract_syntax is not None and context.transfer_syntax:
            syntaxes.setdefault(str(context.abstract_syntax), set()).update(
                str(ts) for ts in context.transfer_syntax
            )
    return syntaxes


def fitted_dataset(archive: Archive, instance: StoredInstance, accepted: set[str]) -> Dataset:
    """`instance` in a transfer syntax the peer accepted (see the module docstring)."""
    try:
        if (
            instance.transfer_syntax not in accepted
            and not is_native(instance.transfer_syntax)
            and accepted & set(NATIVE)
        ):
            data = transcode(archive.store, instance, ExplicitVRLittleEndian)
            return pydicom.dcmread(BytesIO(data))
        return load_dataset(archive.store, instance)
    except (DicomVaultError, StorageError, OSError, ValueError) as exc:
        log.warning("cannot send %s: %s", instance.sop_uid, exc)
        unsendable = Dataset()  # no file meta: pynetdicom cannot send it, counts a failure
        unsendable.SOPInstanceUID = instance.sop_uid
        return unsendable


@dataclass
class SendReport:
    """What a `send` achieved, sub-operation by sub-operation."""

    completed: int = 0
    warnings: int = 0
    failed: list[str] = field(default_factory=list)  # SOP Instance UIDs

    @property
    def ok(self) -> bool:
        return not self.failed


def send(
    archive: Archive,
    known: KnownAE,
    instances: list[StoredInstance],
    progress: Callable[[int], None] | None = None,
) -> SendReport:
    """C-STORE `instances` to `known` over one association; ConnectionError when it
    cannot be established (nothing sent)."""
    if known.host is None or known.port is None:
        raise ConnectionError(f"{known.ae_title} has no host and port in the AE registry")
    ae = AE(ae_title=archive.settings.ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION
    ae.maximum_pdu_size = archive.settings.dicom_max_pdu_bytes
    ae.network_timeout = archive.settings.dicom_network_timeout
    ae.dimse_timeout = archive.settings.dicom_dimse_timeout
    assoc = ae.associate(
        known.host,
        known.port,
        contexts=proposed_contexts(instances),
        ae_title=known.ae_title,
        **connect_options(archive, known),
    )
    if not assoc.is_established:
        raise ConnectionError(
            f"cannot associate with {known.ae_title} at {known.host}:{known.port}"
        )
    report = SendReport()
    try:
        syntaxes = accepted_syntaxes(assoc.accepted_contexts)
        for done, instance in enumerate(instances, 1):
            dataset = fitted_dataset(archive, instance, syntaxes.get(instance.sop_class_uid, set()))
            try:
                answer = assoc.send_c_store(dataset)
                code = getattr(answer, "Status", None)
            except Exception as exc:  # noqa: BLE001 - one failed sub-operation, go on
                log.info("C-STORE of %s to %s failed: %s", instance.sop_uid, known.ae_title, exc)
                code = None
            if code == 0:
                report.completed += 1
            elif code in _WARNINGS:
                report.warnings += 1
            else:
                report.failed.append(instance.sop_uid)
            if not assoc.is_established:
                report.failed.extend(i.sop_uid for i in instances[done:])
                break
            if progress is not None:
                progress(done)
    finally:
        if assoc.is_established:
            assoc.release()
    return report
