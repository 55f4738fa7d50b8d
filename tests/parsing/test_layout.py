"""Structural validation and header parsing: bad files are refused with a reason, good ones read.

The archive-level tests run the one ingest function on both backend pairs and
check that a refused file leaves nothing behind (no index rows, no objects) and
that the next good file is stored as usual.
"""

from __future__ import annotations

import re
import struct
import tempfile
from io import BytesIO
from pathlib import Path
from typing import IO

import pydicom
import pytest
from pydicom.filereader import data_element_generator
from sqlalchemy import func, select

from dicomvault.archive import Archive
from dicomvault.errors import InvalidInstance
from dicomvault.index.schema import events, instances, objects, patients, series, studies
from dicomvault.ingest import Outcome
from dicomvault.parsing import Layout, parse_header, read_layout
from dicomvault.parsing import layout as layout_module
from dicomvault.parsing.layout import MAX_DEPTH
from dicomvault.synthetic import dataset, to_bytes, uid
from tests.parsing.test_dicom_json import CORPUS
from tests.support.dicom_files import (
    BAD_FILES,
    good,
    pixel_data_offset,
    top_level_offsets,
    with_nest,
)


def assert_nothing_stored(archive: Archive) -> None:
    with archive.db.read() as conn:
        for table in (instances, objects, series, studies, patients, events):
            count = conn.execute(select(func.count()).select_from(table)).scalar_one()
            assert count == 0, f"{table.name} has {count} rows"
    assert list(archive.store.list()) == []


def _parse(data: bytes) -> None:
    fp = BytesIO(data)
    parse_header(fp, read_layout(fp))


# -- the refusals, at the ingest function, on both backends -------------------------------


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_refused_with_its_reason_and_nothing_is_stored(
    archive: Archive, case: str
) -> None:
    bad = BAD_FILES[case]
    with pytest.raises(InvalidInstance) as refused:
        archive.ingestor.ingest(BytesIO(bad.data))
    assert re.search(bad.reason, str(refused.value)), str(refused.value)
    assert_nothing_stored(archive)

    after = archive.ingestor.ingest(BytesIO(good("after")))
    assert after.outcome is Outcome.STORED
    assert after.sop_uid == uid("after/i")


def test_nesting_up_to_the_limit_is_stored_whole(archive: Archive) -> None:
    data = with_nest("limit", MAX_DEPTH, "undefined")
    archive.ingestor.ingest(BytesIO(data))
    with archive.db.read() as conn:
        header = conn.execute(select(instances.c.header)).scalar_one()
    depth, node = 0, header
    while "0040A730" in node:
        node = node["0040A730"]["Value"][0]
        depth += 1
    assert depth == MAX_DEPTH
    with pytest.raises(InvalidInstance, match=f"nested deeper than {MAX_DEPTH}"):
        _parse(with_nest("over", MAX_DEPTH + 1, "un"))


# -- every cut of a file ------------------------------------------------------------------


def test_every_cut_inside_the_meta_or_an_element_is_refused() -> None:
    """Truncation anywhere but exactly between two data set elements is caught.

    A cut between two elements leaves a shorter, well-formed file: those that end
    before the required UIDs are caught by the header, those that end after Rows
    and Columns but before Pixel Data by the Image Pixel module check. A file cut
    between the UIDs and Columns reads as a well-formed non-image instance: the
    known limit of structural checks.
    """
    data = good("cuts", size=4)
    offsets = top_level_offsets(data)
    boundaries = set(offsets)
    meta_end = offsets[0]
    columns_at = next(at for at in offsets if data[at : at + 4] == b"\x28\x00\x11\x00")
    accepted = []
    for cut in range(len(data)):
        try:
            _parse(data[:cut])
        except InvalidInstance:
            continue
        accepted.append(cut)
    assert accepted
    assert all(cut in boundaries and meta_end < cut <= columns_at for cut in accepted)


# -- what a good file reads as ------------------------------------------------------------


def test_layout_locates_the_pixel_data_value() -> None:
    ds = dataset(study_uid=uid("l/st"), series_uid=uid("l/se"), sop_uid=uid("l/i"), size=8)
    data = to_bytes(ds)
    layout = read_layout(BytesIO(data))
    assert layout.transfer_syntax == "1.2.840.10008.1.2.1"
    assert layout.media_sop_instance_uid == uid("l/i")
    assert layout.size == len(data)
    assert layout.pixel_offset == pixel_data_offset(data) + 12
    assert layout.pixel_length == 8 * 8 * 2
    assert data[layout.pixel_offset : layout.pixel_offset + layout.pixel_length] == ds.PixelData


def test_implicit_vr_and_big_endian_files_are_read() -> None:
    for syntax in (pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRBigEndian):
        ds = dataset(study_uid=uid("e/st"), series_uid=uid("e/se"), sop_uid=uid("e/i"), size=8)
        ds.file_meta.TransferSyntaxUID = syntax
        if syntax == pydicom.uid.ExplicitVRBigEndian:
            ds.PixelData = struct.pack(">64H", *range(64))
        data = to_bytes(ds)
        fp = BytesIO(data)
        layout = read_layout(fp)
        header = parse_header(fp, layout)
        assert layout.transfer_syntax == syntax
        assert layout.pixel_length == 128
        assert header.sop_uid == uid("e/i")
        assert header.instance["transfer_syntax"] == syntax


def test_header_values_are_indexed_as_read() -> None:
    data = good("hv", study_date="20240229", patient_name="Müller^Jörg")
    fp = BytesIO(data)
    header = parse_header(fp, read_layout(fp))
    assert (header.study_uid, header.series_uid, header.sop_uid) == (
        uid("hv/st"),
        uid("hv/se"),
        uid("hv/i"),
    )
    assert header.patient["patient_name"] == "Müller^Jörg"
    assert header.patient["patient_name_norm"] == "MÜLLER^JÖRG"
    assert header.study["study_date"] == "20240229"
    assert header.instance["rows"] == 16
    assert header.json["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jörg"}]}
    assert header.json["7FE00010"] == {
        "vr": "OW",
        "BulkDataURI": f"studies/{uid('hv/st')}/series/{uid('hv/se')}/instances/"
        f"{uid('hv/i')}/bulkdata/7FE00010",
    }


# -- a file on disk reads as the same bytes in memory -------------------------------------


def _layout_or_refusal(fp: IO[bytes]) -> Layout | str:
    try:
        return read_layout(fp)
    except InvalidInstance as exc:
        return f"refused: {exc}"


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_a_file_on_disk_walks_as_the_same_bytes_in_memory(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk reads a file on disk a window at a time; with a window of 64 bytes
    nearly every element, item and fragment header lies across a window's end, and
    the layout (the elements with their values included) or the refusal is the same
    as over the whole buffer of an in-memory file."""
    data = path.read_bytes()
    in_memory = _layout_or_refusal(BytesIO(data))
    monkeypatch.setattr(layout_module, "_WINDOW", 64)
    with tempfile.TemporaryFile() as disk:
        disk.write(data)
        disk.seek(0)
        assert _layout_or_refusal(disk) == in_memory


def test_every_cut_of_a_file_on_disk_is_judged_as_in_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = good("disk-cuts", size=4)
    monkeypatch.setattr(layout_module, "_WINDOW", 16)
    with tempfile.TemporaryFile() as disk:
        for cut in range(0, len(data), 3):
            disk.seek(0)
            disk.truncate()
            disk.write(data[:cut])
            assert _layout_or_refusal(disk) == _layout_or_refusal(BytesIO(data[:cut])), cut


def test_the_walk_leaves_an_in_memory_file_free_to_close() -> None:
    """The walk reads a BytesIO through its exported buffer; it must release it, or
    the part could not be closed (BufferError) after its ingest."""
    fp = BytesIO(good("released"))
    parse_header(fp, read_layout(fp))
    fp.write(b"more")  # a resize, refused while the buffer is exported
    fp.close()


@pytest.mark.parametrize(
    "syntax",
    [
        pydicom.uid.ImplicitVRLittleEndian,
        pydicom.uid.ExplicitVRLittleEndian,
        pydicom.uid.ExplicitVRBigEndian,
    ],
)
def test_the_walk_keeps_the_elements_pydicom_reads(syntax: str) -> None:
    """`Layout.elements` are the raw elements pydicom's reader yields, empty values
    included: with implicit VR an empty element has no VR and the value pydicom gives
    that (None), not the one of its dictionary VR."""
    ds = dataset(study_uid=uid("w/st"), series_uid=uid("w/se"), sop_uid=uid("w/i"), size=4)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.AccessionNumber = ""
    ds.PatientBirthDate = ""
    ds.add_new(0x00181060, "DS", None)  # Trigger Time, empty
    ds.add_new(0x00280034, "IS", None)  # Pixel Aspect Ratio, empty
    ds.add_new(0x00200012, "IS", None)  # Acquisition Number, empty
    if syntax == pydicom.uid.ExplicitVRBigEndian:
        ds.PixelData = struct.pack(">16H", *range(16))
    data = to_bytes(ds)
    layout = read_layout(BytesIO(data))
    fp = BytesIO(data)
    fp.seek(layout.dataset_offset)
    implicit = syntax == pydicom.uid.ImplicitVRLittleEndian
    little = syntax != pydicom.uid.ExplicitVRBigEndian
    expected = list(
        data_element_generator(
            fp, implicit, little, stop_when=lambda tag, _vr, _length: tag == 0x7FE00010
        )
    )
    assert layout.elements is not None
    assert list(layout.elements) == expected
    assert any(e.length == 0 for e in expected)
