"""C-STORE responses encoded directly, not through pynetdicom's general message path.

pynetdicom sends a response by building a pydicom data set for its command set
element by element, encoding it once to learn the group length and again to send
it, then splitting it into P-DATA values: about 0.22 ms of CPU for a C-STORE-RSP of
about 150 bytes, paid for every instance a modality sends. `quick_store_replies`
makes one accepted association send its C-STORE responses as bytes written here
(PS3.7 9.3.1.2, implicit VR little endian as PS3.7 6.3.1 requires), identical to
what pynetdicom would send; anything else it sends, and any response carrying what
this encoder does not write (an Offending Element, a comment past ASCII, a command
longer than one P-DATA value), still goes pynetdicom's way. So does everything
while a handler watches sent messages (EVT_DIMSE_SENT, as pynetdicom's standard
logging handlers do at INFO), since the fast path builds no message to show it.
Only the association's own `send_msg` changes, as `prompt.make_prompt` does.
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

__all__ = ["encode_store_response", "quick_store_replies"]

_C_STORE_RSP = 0x8001  # Command Field
_NO_DATA_SET = 0x0101  # Command Data Set Type: no data set follows
_LAST_COMMAND_FRAGMENT = b"\x03"  # message control header: command, last fragment
_PDV_OVERHEAD = 6  # item length (4), context ID (1), message control header (1)


def _element(element: int, value: bytes) -> bytes:
    """One command element (group 0000), implicit VR little endian."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _us(element: int, value: int) -> bytes:
    return _element(element, struct.pack("<H", value))


def _text(value: str, pad: bytes) -> bytes:
    encoded = value.encode("ascii")
    return encoded + pad if len(encoded) % 2 else encoded


def encode_store_response(rsp: C_STORE) -> bytes | None:
    """The command set of the C-STORE-RSP `rsp`, or None when it holds something this
    does not encode (pynetdicom's encoder then does it)."""
    if rsp.MessageIDBeingRespondedTo is None or rsp.Status is None:
        return None
    if rsp.OffendingElement is not None:
        return None
    comment = rsp.ErrorComment
    if comment is not None and not (isinstance(comment, str) and comment.isascii()):
        return None
    sop_class, sop_instance = rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID
    if not all(uid is None or uid.isascii() for uid in (sop_class, sop_instance)):
        return None
    parts = []
    if sop_class is not None:
        parts.append(_element(0x0002, _text(sop_class, b"\x00")))
    parts.append(_us(0x0100, _C_STORE_RSP))
    parts.append(_us(0x0120, rsp.MessageIDBeingRespondedTo))
    parts.append(_us(0x0800, _NO_DATA_SET))
    parts.append(_us(0x0900, rsp.Status))
    if comment is not None:
        parts.append(_element(0x0902, _text(comment, b" ")))
    if sop_instance is not None:
        parts.append(_element(0x1000, _text(sop_instance, b"\x00")))
    body = b"".join(parts)
    return _element(0x0000, struct.pack("<I", len(body))) + body


def quick_store_replies(assoc: Any) -> None:
    """Send the C-STORE responses of the accepted `assoc` through `encode_store_response`."""
    dimse = assoc.dimse
    send_msg = dimse.send_msg

    def send(primitive: Any, context_id: int) -> None:
        encoded = None
        if isinstance(primitive, C_STORE) and not assoc.get_handlers(evt.EVT_DIMSE_SENT):
            encoded = encode_store_response(primitive)
        limit = dimse.maximum_pdu_size
        if encoded is None or (limit and len(encoded) > limit - _PDV_OVERHEAD):
            send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, _LAST_COMMAND_FRAGMENT + encoded))
        dimse.dul.send_pdu(pdata)

    dimse.send_msg = send
