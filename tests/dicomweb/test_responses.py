"""DICOM JSON bodies: compact UTF-8 JSON, the same text the standard library writes, and
values orjson refuses still written."""

from __future__ import annotations

import json

from pydicom.valuerep import IS, DSfloat

from dicomvault.dicomweb.responses import dicom_json_bytes

MATCH = {
    "00080020": {"vr": "DA", "Value": ["20240115"]},
    "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Zoë", "Ideographic": "山田^太郎"}]},
    "00201208": {"vr": "IS", "Value": [1000]},
    "00280030": {"vr": "DS", "Value": [0.5, 0.625]},
    "00081190": {"vr": "UR", "Value": ["http://archive/dicom-web/studies/1.2.3"]},
    "00400275": {"vr": "SQ", "Value": [{"00321060": {"vr": "LO"}}]},
}


def test_the_text_is_the_standard_librarys_compact_utf8_json() -> None:
    body = dicom_json_bytes([MATCH, MATCH])
    expected = json.dumps([MATCH, MATCH], separators=(",", ":"), ensure_ascii=False)
    assert body == expected.encode()
    assert "Zoë".encode() in body  # UTF-8, not \\u escapes


def test_an_integer_past_64_bits_is_still_written() -> None:
    value = [{"00191001": {"vr": "UV", "Value": [2**70]}}]
    assert json.loads(dicom_json_bytes(value)) == value


def test_pydicoms_own_value_types_are_written_as_json_numbers() -> None:
    value = [
        {
            "00280030": {"vr": "DS", "Value": [DSfloat("0.5")]},
            "00200013": {"vr": "IS", "Value": [IS("7")]},
        }
    ]
    assert json.loads(dicom_json_bytes(value)) == [
        {"00280030": {"vr": "DS", "Value": [0.5]}, "00200013": {"vr": "IS", "Value": [7]}}
    ]
