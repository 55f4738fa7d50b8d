"""C-STORE responses encoded directly (dimse/replies.py): the same bytes pynetdicom
sends, and pynetdicom's own path for everything else."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.transport import AssociationSocket

from dicomvault.dimse.replies import encode_store_response, quick_store_replies

CT = "1.2.840.10008.5.1.4.1.1.2"  # odd length
MR = "1.2.840.10008.5.1.4.1.1.4.1"  # odd length too; the instance UIDs vary
EVEN = "1.2.826.0.1.3680043.8.498.1234"
ODD = "1.2.826.0.1.3680043.8.498.12345"


def _response(
    message_id: int = 7,
    status: int = 0x0000,
    comment: str | None = None,
    sop_class: str | None = CT,
    sop_instance: str | None = EVEN,
) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageID = message_id
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    rsp.ErrorComment = comment
    return rsp


def _pynetdicom_bytes(rsp: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    encoded = encode(message.command_set, True, True)
    assert encoded is not None
    return encoded


@pytest.mark.parametrize(
    "rsp",
    [
        _response(),
        _response(sop_instance=ODD),
        _response(sop_class=MR, sop_instance=ODD, message_id=65535),
        _response(message_id=1, status=0xB007, comment="identical instance already stored"),
        _response(status=0xA700, comment="archive storage unavailable, retry"),  # even
        _response(status=0xC000, comment="x" * 64),
        _response(sop_class=None, sop_instance=None, status=0x0124, comment="site"),
    ],
    ids=["success", "odd-uid", "high-id", "odd-comment", "even-comment", "64", "no-uids"],
)
def test_a_response_is_encoded_as_pynetdicom_encodes_it(rsp: C_STORE) -> None:
    assert encode_store_response(rsp) == _pynetdicom_bytes(rsp)


def test_what_it_does_not_write_is_left_to_pynetdicom() -> None:
    request = C_STORE()
    request.MessageID = 3
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = EVEN
    assert encode_store_response(request) is None  # a request: no MessageIDBeingRespondedTo
    offending = _response(status=0xA900)
    offending.OffendingElement = [0x00100010]
    assert encode_store_response(offending) is None
    assert encode_store_response(_response(status=0xC000, comment="Übermittlung")) is None


@pytest.fixture
def association(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Any, list[Any], list[Any]]]:
    """An acceptor association whose C-STORE responses go `quick_store_replies`' way;
    the PDUs it hands to its DUL, and the messages pynetdicom's own path sent. Made
    without pynetdicom's logging handlers, as the node makes its associations."""
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "none")
    ours, peer = socket.socketpair()
    assoc = Association(AE(), "acceptor")
    assoc.set_socket(AssociationSocket(assoc, client_socket=ours))
    assoc.requestor.maximum_length = 16382
    pdus: list[Any] = []
    assoc.dul.send_pdu = pdus.append
    general: list[Any] = []
    original = assoc.dimse.send_msg

    def general_path(primitive: Any, context_id: int) -> None:
        general.append(primitive)
        original(primitive, context_id)

    assoc.dimse.send_msg = general_path
    quick_store_replies(assoc)
    yield assoc, pdus, general
    ours.close()
    peer.close()


def test_an_association_sends_its_store_responses_as_one_encoded_value(
    association: tuple[Any, list[Any], list[Any]],
) -> None:
    assoc, pdus, general = association
    rsp = _response(status=0xB007, comment="identical instance already stored")
    assoc.dimse.send_msg(rsp, 5)
    assert general == []
    assert len(pdus) == 1
    assert pdus[0].presentation_data_value_list == [(5, b"\x03" + _pynetdicom_bytes(rsp))]


def test_other_messages_and_watched_associations_take_pynetdicoms_path(
    association: tuple[Any, list[Any], list[Any]],
) -> None:
    assoc, pdus, general = association
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    echo.Status = 0
    assoc.dimse.send_msg(echo, 1)
    assert general == [echo]

    seen: list[Any] = []
    assoc.bind(evt.EVT_DIMSE_SENT, lambda event: seen.append(event.message))
    rsp = _response()
    assoc.dimse.send_msg(rsp, 1)
    assert general == [echo, rsp]
    assert [type(message) for message in seen] == [C_STORE_RSP]
    assert pdus[-1].presentation_data_value_list == [(1, b"\x03" + _pynetdicom_bytes(rsp))]


def test_a_peer_with_pdus_too_small_for_the_response_gets_pynetdicoms_fragments(
    association: tuple[Any, list[Any], list[Any]],
) -> None:
    assoc, pdus, general = association
    rsp = _response(comment="y" * 64)
    assoc.requestor.maximum_length = len(_pynetdicom_bytes(rsp))  # less than value + 6
    assoc.dimse.send_msg(rsp, 1)
    assert general == [rsp]
    assert len(pdus) == 2
