"""The header is read from where the layout found the data set begins, not by
`dcmread` from the top: over every file of the corpus the archive takes, both give
the same Header, and only a deflated data set still goes through `dcmread`."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import IO, Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicomvault.errors import InvalidInstance
from dicomvault.parsing import Header, Layout, parse_header, read_layout
from dicomvault.parsing import header as header_module
from dicomvault.parsing.header import text
from tests.parsing.test_dicom_json import CORPUS


def _by_dcmread(fp: IO[bytes], _layout: Layout) -> Dataset:
    fp.seek(0)
    return pydicom.dcmread(fp, stop_before_pixels=True)


def _parsed(data: bytes) -> tuple[Layout, Header | str]:
    layout = read_layout(io.BytesIO(data))
    try:
        return layout, parse_header(io.BytesIO(data), layout)
    except InvalidInstance as exc:
        return layout, f"refused: {exc}"


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_the_header_is_the_one_dcmread_gives(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = path.read_bytes()
    try:
        read_layout(io.BytesIO(data))
    except InvalidInstance:
        pytest.skip("not a file the archive takes")
    calls: list[Any] = []
    real_dcmread = pydicom.dcmread

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real_dcmread(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counted)
    layout, fast = _parsed(data)
    assert bool(calls) == (layout.transfer_syntax == DeflatedExplicitVRLittleEndian)
    monkeypatch.setattr(header_module, "_read_dataset", _by_dcmread)
    monkeypatch.setattr(header_module, "_uid_text", _uid_by_pydicom)
    _, reference = _parsed(data)
    assert fast == reference


def _uid_by_pydicom(ds: Dataset, tag: int) -> str | None:
    return text(ds[tag].value) if tag in ds else None


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    group, element = divmod(tag, 0x10000)
    if vr == b"UN":  # a 4-byte length after two reserved bytes
        return struct.pack("<HH2s2xI", group, element, vr, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


@pytest.mark.parametrize(
    "value",
    [
        b"1.2.840.10008.1.2",
        b"1.2.3\0",
        b"1.2.3 ",
        b" 1.2.3",
        b"1.2.3\0\0",
        b"1.2\\3.4 ",
        b"1.2\\",
        b"",
        b"1.2.\xe9",
        b"\0\0",
    ],
)
@pytest.mark.parametrize("vr", [b"UI", b"LO", b"UN"])
def test_a_uid_read_from_its_bytes_is_the_one_pydicom_converts(value: bytes, vr: bytes) -> None:
    tag = 0x0020000D
    stream = io.BytesIO(_element(tag, vr, value))
    ds = read_dataset(stream, is_implicit_VR=False, is_little_endian=True)
    fast = header_module._uid_text(ds, tag)
    assert fast == _uid_by_pydicom(read_dataset(io.BytesIO(stream.getvalue()), False, True), tag)
    assert header_module._uid_text(ds, 0x00080018) is None  # absent
