"""The DICOM JSON (PS3.18 F) of a parsed header, with large binary values as BulkDataURIs.

Every ingest converts its whole header, so this is on the hot path of every
door: pydicom's `DataElement.to_json_dict` costs about 10 µs an element (a
third of an instance's ingest CPU). Most elements of a header are plain: a
little-endian explicit-VR value of a string, number or binary VR, in ASCII.
Those are converted here straight from their encoded bytes, by pydicom's own
rules (which padding is stripped for which VR, how multi-values split, when a
binary value becomes a BulkDataURI); anything else (sequences' items recurse
here, but implicit VR, UN, AT, non-ASCII text, a number pydicom would read
differently) goes through pydicom, element by element. The output is the one
pydicom writes; a test compares the two over every file of the test corpus.
A value pydicom cannot decode or encode at all (a US of three bytes) is left
out: the element is given with its VR and no value, and the instance is kept.

Values are made storable on every index backend and parseable by every client
(`storable`): NUL characters, which PostgreSQL JSONB refuses, are dropped when
trailing and shown as U+FFFD inside a value; non-finite floats (not JSON
numbers) become the strings "NaN", "Infinity", "-Infinity".
"""

from __future__ import annotations

import base64
import json
import math
import re
import struct
from collections.abc import Callable
from operator import itemgetter
from typing import Any

import orjson
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

__all__ = [
    "BULK_DATA_THRESHOLD",
    "dataset_to_json",
    "dicom_json_bytes",
    "dicom_json_text",
    "storable",
    "without_nul",
]

BULK_DATA_THRESHOLD = 1024
# pydicom's rule: a value longer than this many bytes would pass the threshold once
# base64-encoded, so it is given as a BulkDataURI instead of InlineBinary.
_INLINE_MAX = (BULK_DATA_THRESHOLD // 4) * 3

_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_SIZES = {vr: struct.calcsize("<" + code) for vr, code in _NUMBERS.items()}
_BINARY = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
# How pydicom decodes each string VR (pydicom.values): the whole value stripped of
# trailing spaces and NULs and then split (`multi_string`), split and then each
# value stripped (`convert_text`), or one value never split.
_SPLIT_AFTER_STRIP = frozenset({"AS", "CS", "DA", "DT", "TM", "UI"})
_STRIP_EACH = frozenset({"SH", "LO", "UC"})
_SINGLE = frozenset({"LT", "ST", "UT"})
_INT_VR = frozenset({"IS", "US", "SS", "UL", "SL", "UV", "SV"})
_FLOAT_VR = frozenset({"DS", "FL", "FD"})
_STRING_VR = _SPLIT_AFTER_STRIP | _STRIP_EACH | _SINGLE | {"AE", "UR", "IS", "DS"}
_IS = re.compile(r" *[+-]?[0-9]+ *")
_DS = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


_by_tag = itemgetter(0)


class _Irregular(Exception):
    """The element is not one the fast path converts: pydicom converts it."""


def dataset_to_json(ds: Dataset, uri_prefix: str, path: str = "") -> dict[str, Any]:
    """DICOM JSON of `ds`; a value over the threshold is a BulkDataURI naming its path.

    The URI of a nested value names its path (`tag/item/tag`), so the bulkdata
    route can find it again.
    """
    out: dict[str, Any] = {}
    # The elements as held (`items`: raw ones unconverted), in tag order; `get_item`
    # gives the same through a tag conversion and its checks per element. A deferred
    # value (none here: the header is read without a defer size) needs `get_item`.
    for tag, held in sorted(ds.items(), key=_by_tag):
        deferred = isinstance(held, RawDataElement) and held.value is None and held.length
        elem: DataElement | RawDataElement = ds.get_item(tag) if deferred else held
        key = f"{tag:08X}"
        if elem is None:
            continue
        if elem.VR == "SQ" or (isinstance(elem, RawDataElement) and elem.VR is None):
            # Implicit VR is resolved, and sequences parsed, by pydicom.
            decoded = _decoded(ds, tag)
            if decoded is None:
                out[key] = {"vr": elem.VR or "UN"}
                continue
            elem = decoded
        if isinstance(elem, DataElement) and elem.VR == "SQ":
            elem_path = f"{path}/{key}" if path else key
            items = [
                dataset_to_json(item, uri_prefix, f"{elem_path}/{index}")
                for index, item in enumerate(elem.value)
            ]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue
        try:
            if isinstance(elem, RawDataElement):
                out[key] = _from_bytes(elem, uri_prefix, path, key)
            else:
                out[key] = _from_value(elem)
        except _Irregular:
            decoded = _decoded(ds, tag)
            out[key] = (
                {"vr": elem.VR}
                if decoded is None
                else _by_pydicom(decoded, _uri(uri_prefix, path, key))
            )
    return out


def _decoded(ds: Dataset, tag: BaseTag) -> DataElement | None:
    """The element as pydicom decodes it, or None when it cannot (a US value of three
    bytes): such a value is left out of the JSON like one pydicom cannot encode."""
    try:
        return ds[tag]
    except Exception:  # noqa: BLE001 - pydicom raises many kinds for malformed values
        return None


def _uri(prefix: str, path: str, key: str) -> str:
    """The BulkDataURI of the element `key` of the data set at `path` (made only for the
    few elements that need one)."""
    return f"{prefix}{path}/{key}" if path else f"{prefix}{key}"


def _from_bytes(raw: RawDataElement, prefix: str, path: str, key: str) -> dict[str, Any]:
    """An element straight from its encoded value, by pydicom's decoding rules; a large
    binary value becomes a BulkDataURI (`_uri` of `prefix`, `path`, `key`)."""
    vr, value = raw.VR, raw.value
    if vr is None or not raw.is_little_endian or raw.is_implicit_VR or not isinstance(value, bytes):
        raise _Irregular
    if not value:
        if vr in _NUMBERS or vr in _BINARY or vr in _STRING_VR or vr == "PN":
            return {"vr": vr}
        raise _Irregular
    if vr in _BINARY:
        if len(value) > _INLINE_MAX:
            return {"vr": vr, "BulkDataURI": _uri(prefix, path, key)}
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    if vr in _NUMBERS:
        count, rest = divmod(len(value), _SIZES[vr])
        if rest:
            raise _Irregular
        numbers = list(struct.unpack(f"<{count}{_NUMBERS[vr]}", value))
        if vr in _FLOAT_VR:
            return {"vr": vr, "Value": [_finite(n) for n in numbers]}
        return {"vr": vr, "Value": numbers}
    if not value.isascii() or b"\x1b" in value:
        raise _Irregular  # decoded by the character set: pydicom's business
    text = value.decode("ascii")
    if vr == "PN":
        return _person_names(text)
    values = _strings(vr, text)
    if vr == "IS":
        if not all(_IS.fullmatch(v) for v in values):
            raise _Irregular
        return {"vr": vr, "Value": [int(v) for v in values]}
    if vr == "DS":
        if not all(_DS.fullmatch(v) for v in values):
            raise _Irregular
        return {"vr": vr, "Value": [_finite(float(v)) for v in values]}
    if len(values) == 1 and not values[0]:
        return {"vr": vr}
    return {"vr": vr, "Value": [without_nul(v) if "\0" in v else v for v in values]}


def _strings(vr: str, text: str) -> list[str]:
    """The values of a string VR as pydicom decodes them (pydicom.values)."""
    if vr in _SPLIT_AFTER_STRIP:
        return text.rstrip("\0 ").split("\\")
    if vr in _STRIP_EACH:
        return [v.rstrip("\0 ") for v in text.split("\\")]
    if vr in _SINGLE:
        return [text.rstrip("\0 ")]
    if vr == "AE":
        return [v.strip() for v in text.split("\\")]
    if vr == "UR":
        return [text.rstrip()]
    if vr == "IS":
        return text.rstrip(" \0").split("\\")
    if vr == "DS":
        return text.strip().rstrip(" \0").split("\\")
    raise _Irregular


def _person_names(text: str) -> dict[str, Any]:
    """PN values as pydicom writes them: up to three component groups by name."""
    stripped = text.rstrip("\0 ")
    if not stripped:
        return {"vr": "PN"}
    names = []
    for value in stripped.split("\\"):
        groups = value.split("=")
        while groups and not groups[-1]:
            groups.pop()
        if not groups or len(groups) > 3 or "\0" in value:
            raise _Irregular
        names.append(dict(zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False)))
    return {"vr": "PN", "Value": names}


def _from_value(elem: DataElement) -> dict[str, Any]:
    """An element pydicom has already decoded (read by the header parse before)."""
    vr, value = elem.VR, elem.value
    if vr not in _STRING_VR and vr not in _NUMBERS:
        raise _Irregular
    if value is None or value == "":
        return {"vr": vr}
    values = list(value) if isinstance(value, MultiValue | list) else [value]
    if not values:
        return {"vr": vr}
    if vr in _INT_VR:
        return {"vr": vr, "Value": [_number(int, v) for v in values]}
    if vr in _FLOAT_VR:
        return {"vr": vr, "Value": [_finite(_number(float, v)) for v in values]}
    if not all(isinstance(v, str) for v in values):
        raise _Irregular
    return {"vr": vr, "Value": [without_nul(v) if "\0" in v else str(v) for v in values]}


def _number(kind: Callable[[Any], Any], value: Any) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise _Irregular from exc


def _by_pydicom(elem: DataElement, uri: str) -> dict[str, Any]:
    """pydicom's own conversion; a value it cannot encode is left out, not fatal."""
    try:
        converted: dict[str, Any] = storable(elem.to_json_dict(lambda _: uri, BULK_DATA_THRESHOLD))
        return converted
    except Exception:  # noqa: BLE001 - one unencodable value must not refuse the instance
        return {"vr": elem.VR}


def _finite(number: float) -> float | str:
    if math.isfinite(number):
        return number
    return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")


def without_nul(value: str) -> str:
    """`value` without trailing NULs, and with U+FFFD for a NUL inside (see module doc)."""
    return value.rstrip("\0").replace("\0", "\ufffd")


def storable(value: Any) -> Any:
    """A JSON value every index backend stores and every client parses (see module doc)."""
    if isinstance(value, str):
        return without_nul(value)
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, list):
        return [storable(v) for v in value]
    if isinstance(value, dict):
        return {k: storable(v) for k, v in value.items()}
    return value


def dicom_json_bytes(value: Any) -> bytes:
    """`value` as compact UTF-8 JSON, written by orjson: a QIDO-RS answer of 1,000
    instances (1.5 MB) took 26.5 ms with the standard library's encoder and 3.9 ms
    with orjson, the same text but for spacing (characters past ASCII are written as
    UTF-8, not as \\u escapes)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # a value orjson does not write (an integer past 64 bits, a float
        # subclass such as pydicom's DSfloat): the standard library's encoder takes it
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def dicom_json_text(value: Any) -> str:
    """`dicom_json_bytes` as text: how the index writes its JSON columns (the header of
    every instance stored), where the standard library's encoder cost 4% of the
    server's CPU for small instances."""
    return dicom_json_bytes(value).decode()
