"""The fast DICOM JSON conversion writes what pydicom writes, element for element.

The reference below is pydicom's `to_json_dict` over every element, made
storable: what the archive stored before the fast path existed. The corpus is
pydicom's own test files (implicit VR, big endian, character sets, private
sequences, reports, RT objects), the synthetic instances, and hand-encoded
headers whose values sit on every edge of pydicom's decoding rules.
"""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

from dicomvault.parsing.dicom_json import (
    BULK_DATA_THRESHOLD,
    dataset_to_json,
    dicom_json_bytes,
    dicom_json_text,
    storable,
)
from dicomvault.synthetic import instance_bytes, uid
from tests.support.dicom_files import element

PREFIX = "studies/1/series/2/instances/3/bulkdata/"


def reference(ds: Dataset, path: str = "") -> dict[str, Any]:
    """pydicom's conversion of every element, made storable (the former code path)."""
    out: dict[str, Any] = {}
    for elem in ds:
        key = f"{elem.tag:08X}"
        elem_path = f"{path}/{key}" if path else key
        if elem.VR == "SQ":
            items = [reference(item, f"{elem_path}/{i}") for i, item in enumerate(elem.value)]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue
        uri = f"{PREFIX}{elem_path}"
        try:
            out[key] = storable(elem.to_json_dict(lambda _e, _u=uri: _u, BULK_DATA_THRESHOLD))
        except Exception:  # noqa: BLE001 - as the archive does: the value is left out
            out[key] = {"vr": elem.VR}
    return out


def _corpus_files() -> Iterator[Path]:
    folder = Path(get_testdata_file("CT_small.dcm") or "").parent
    yield from sorted(folder.glob("*.dcm"))
    yield from sorted(Path(f) for f in get_charset_files("*.dcm"))


CORPUS = list(_corpus_files())


def _read(data: bytes) -> Dataset:
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)


def _same(data: bytes, *, touch: tuple[str, ...] = ()) -> None:
    """The fast conversion of `data` equals the reference, also after `touch`ed reads."""
    fast_ds = _read(data)
    for keyword in touch:  # the header parse reads some values before converting
        fast_ds.get(keyword)
    fast = dataset_to_json(fast_ds, PREFIX)
    expected = reference(_read(data))
    assert _canonical(fast) == _canonical(expected)


def _canonical(value: Any) -> Any:
    """Values compared by JSON type too: 1 and 1.0 differ in the stored JSON."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        return ("float", value if not math.isnan(value) else "nan")
    if isinstance(value, str):
        return str(value)
    return value


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's, about the files' own faults
@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_pydicom_corpus_converts_as_pydicom_does(path: Path) -> None:
    try:
        _read(path.read_bytes())
    except Exception:  # noqa: BLE001 - a file pydicom cannot read is not this test's case
        pytest.skip("pydicom cannot read it")
    _same(path.read_bytes())
    _same(path.read_bytes(), touch=("StudyInstanceUID", "Rows", "PatientName", "ImageType"))


def test_corpus_is_there() -> None:
    """The comparison above must not pass by having nothing to compare."""
    assert len(CORPUS) > 60


def test_synthetic_instance_converts_as_pydicom_does() -> None:
    data = instance_bytes(study_uid=uid("j/st"), series_uid=uid("j/se"), sop_uid=uid("j/i"))
    _same(data)
    _same(data, touch=("SOPInstanceUID", "Rows", "Columns", "BitsAllocated", "SeriesNumber"))


# Explicit VR little endian values on the edges of pydicom's decoding rules:
# padding, empty values and values, NULs, numbers pydicom reads loosely or not
# at all, person name groups, binary values either side of the inline limit.
EDGES: list[tuple[int, bytes, bytes]] = [
    (0x00080005, b"CS", b"ISO_IR 100"),
    (0x00080008, b"CS", b"A \\B "),
    (0x00080016, b"UI", b"1.2.3\0"),
    (0x00080018, b"UI", b"1.2.3.4\\1.2.5 "),
    (0x00080020, b"DA", b"20240115"),
    (0x00080021, b"DA", b""),
    (0x00080030, b"TM", b"101500.5 "),
    (0x00080050, b"SH", b"  "),
    (0x00080054, b"AE", b" AE1 \\AE2\0"),
    (0x00080060, b"CS", b"\\"),
    (0x00080070, b"LO", b"ACME\0INC "),
    (0x00080080, b"LO", b"Caf\xe9 "),  # Latin-1: decoded by pydicom, not here
    (0x00080090, b"PN", b"Doe^John=Ideo=Phon"),
    (0x00080096, b"PN", b"A^B==\0"),
    (0x0008009C, b"PN", b"One\\\\Two"),
    (0x00081010, b"SH", b"X\\Y  \\ "),
    (0x00081030, b"LO", b"\0\0"),
    (0x00081048, b"PN", b"=\\A"),
    (0x00081050, b"PN", b"  "),
    (0x00081060, b"PN", b"A=B=C=D"),
    (0x00081090, b"LO", b"Trailing\0"),
    (0x00081190, b"UR", b"http://example.org/x  "),
    (0x00082111, b"ST", b"a\\b \0"),
    (0x00100010, b"PN", b"Doe^Jane "),
    (0x00101010, b"AS", b"045Y"),
    (0x00101020, b"DS", b" 1.75 "),
    (0x00101030, b"DS", b"70.5\\ 80"),
    (0x00181000, b"LO", b""),
    (0x00181020, b"LO", b"v1\\v2\\"),
    (0x00181030, b"LO", b"\x1b$B"),  # an escape sequence: the character set's business
    (0x00181050, b"DS", b"1e400"),
    (0x00181060, b"DS", b"nan "),
    (0x00181063, b"DS", b"1.0\\\\2"),
    (0x00181088, b"IS", b"+5 "),
    (0x00181100, b"DS", b".5"),
    (0x00181110, b"DS", b"-2.5E-3"),
    (0x00181111, b"DS", b"abc"),
    (0x00181150, b"IS", b"1.0 "),
    (0x00181151, b"IS", b"2147483648"),
    (0x00181152, b"IS", b"  "),
    (0x00181153, b"IS", b"12\\-3"),
    (0x00181160, b"SH", b"\x00"),
    (0x00181170, b"IS", b"1_000"),
    (0x00200011, b"IS", b" 7"),
    (0x00200013, b"IS", b""),
    (0x00200032, b"DS", b"0\\0\\5"),
    (0x00280002, b"US", struct.pack("<H", 1)),
    (0x00280010, b"US", struct.pack("<3H", 1, 2, 3)),
    (0x00280030, b"DS", b"0.7\\0.7 "),
    (0x00280100, b"US", b""),
    (0x00280106, b"SS", struct.pack("<h", -5)),
    (0x00280107, b"US", struct.pack("<H", 65535)),
    (0x00281050, b"DS", b"40"),
    (0x00283003, b"LO", b"Text with \\ sep"),
    (0x00400009, b"SH", b"A\0B"),
    (0x00400244, b"DA", b"2024.01.15"),
    (0x00404030, b"UC", b"u1\\u2 "),
    (0x0040A30A, b"DS", b"1e5"),
    (0x00700084, b"PN", b"Only^Alpha\\Second^Name"),
    (0x00720004, b"UT", b"Long text \\ not split   "),
    (0x00189089, b"FD", struct.pack("<3d", 1.5, float("nan"), float("inf"))),
    (0x00189219, b"FL", struct.pack("<2f", -float("inf"), 0.1)),
    (0x00189306, b"FD", b""),
    (0x00209056, b"SL", struct.pack("<2l", -1, 2**31 - 1)),
    (0x00209057, b"UL", struct.pack("<L", 2**32 - 1)),
    (0x00209161, b"UV", struct.pack("<Q", 2**64 - 1)),
    (0x00209162, b"SV", struct.pack("<q", -(2**63))),
    (0x00209165, b"AT", struct.pack("<HH", 0x0010, 0x0020)),
    (0x00282000, b"OB", bytes(range(10))),
    (0x00282002, b"OB", bytes(768)),
    (0x00282004, b"OB", bytes(770)),
    (0x00283006, b"OW", bytes(2000)),
    (0x00283010, b"OB", b""),
    (0x00460100, b"OF", struct.pack("<2f", 1.0, 2.0)),
    (0x00460102, b"OD", bytes(800)),
    (0x00460104, b"OL", bytes(8)),
    (0x00660040, b"OV", bytes(16)),
    (0x00091010, b"UN", b"unknown bytes"),
    (0x00100020, b"UN", b"PID1"),  # a known tag sent as UN: pydicom reads it as LO
]


def _edge_dataset(elements: list[tuple[int, bytes, bytes]]) -> bytes:
    return b"".join(element(tag, vr, value) for tag, vr, value in sorted(elements))


def _read_body(body: bytes) -> Dataset:
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    return read_dataset(io.BytesIO(body), is_implicit_VR=False, is_little_endian=True)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_edge_values_convert_as_pydicom_does() -> None:
    body = _edge_dataset(EDGES)
    fast = dataset_to_json(_read_body(body), PREFIX)
    expected = reference(_read_body(body))
    assert len(fast) == len(EDGES)
    assert _canonical(fast) == _canonical(expected)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_edge_values_in_a_sequence_item_convert_as_pydicom_does() -> None:
    item = _edge_dataset(EDGES)
    header = struct.pack("<HH", 0xFFFE, 0xE000) + struct.pack("<I", len(item))
    body = element(0x0040A730, b"SQ", header + item)
    fast = dataset_to_json(_read_body(body), PREFIX)
    expected = reference(_read_body(body))
    assert fast["0040A730"]["Value"][0]["00282004"]["BulkDataURI"] == (
        f"{PREFIX}0040A730/0/00282004"
    )
    assert _canonical(fast) == _canonical(expected)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_storable_values_on_the_fast_path() -> None:
    """NULs and non-finite floats come out as the index backends accept them."""
    fast = dataset_to_json(_read_body(_edge_dataset(EDGES)), PREFIX)
    assert fast["00400009"] == {"vr": "SH", "Value": ["A\ufffdB"]}
    assert fast["00189089"]["Value"] == [1.5, "NaN", "Infinity"]
    assert fast["00189219"]["Value"][0] == "-Infinity"
    assert fast["00080054"]["Value"] == ["AE1", "AE2"]
    assert fast["00080090"]["Value"] == [
        {"Alphabetic": "Doe^John", "Ideographic": "Ideo", "Phonetic": "Phon"}
    ]


def test_plain_header_does_not_go_through_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    """The synthetic CT header is all plain values: none is converted by pydicom."""
    calls: list[int] = []
    original = DataElement.to_json_dict

    def counting(self: DataElement, *args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(self.tag)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DataElement, "to_json_dict", counting)
    data = instance_bytes(study_uid=uid("p/st"), series_uid=uid("p/se"), sop_uid=uid("p/i"))
    converted = dataset_to_json(_read(data), PREFIX)
    assert len(converted) > 30
    assert calls == []


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_value_pydicom_cannot_decode_is_left_out() -> None:
    """pydicom raises on a UL of three bytes; the JSON keeps the element without a value."""
    body = element(0x00209128, b"UL", b"\x00\x00\x00") + element(0x00209129, b"US", b"\x01")
    body = element(0x00200013, b"IS", b"4 ") + body
    converted = dataset_to_json(_read_body(body), PREFIX)
    assert converted == {
        "00200013": {"vr": "IS", "Value": [4]},
        "00209128": {"vr": "UL"},
        "00209129": {"vr": "US"},
    }


def test_json_text_is_compact_utf8_and_takes_what_orjson_refuses() -> None:
    value = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Ünïcode^Nàme"}]}}
    assert (
        dicom_json_text(value) == '{"00100010":{"vr":"PN","Value":[{"Alphabetic":"Ünïcode^Nàme"}]}}'
    )
    assert dicom_json_bytes(value) == dicom_json_text(value).encode()

    class Decimal(float):  # as pydicom's DSfloat: a float subclass
        pass

    awkward = {"big": 2**70, "ds": Decimal(1.5)}
    assert json.loads(dicom_json_text(awkward)) == {"big": 2**70, "ds": 1.5}
