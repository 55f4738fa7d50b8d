"""The index columns read from the header's DICOM JSON are those pydicom's `get` gives.

On ingest the columns are read from the JSON just made (`json_getter`) rather
than by decoding the attributes with pydicom a second time; over every file of
the corpus, and the hand-encoded edge values, both ways must fill the same rows.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicomvault.parsing import Layout, read_layout
from dicomvault.parsing.dicom_json import dataset_to_json
from dicomvault.parsing.header import index_values, json_getter
from dicomvault.synthetic import instance_bytes, uid
from tests.parsing.test_dicom_json import CORPUS, EDGES, PREFIX, _edge_dataset, _read, _read_body

PEOPLE = [
    (0x00080090, b"PN", b"Smith^John=Sumisu=Phon"),
    (0x00100010, b"PN", b"Yamada^Tarou\\Second^Name"),
    (0x00100020, b"LO", b"ID \0X"),
    (0x00100040, b"CS", b"F "),
    (0x00200011, b"IS", b" 7"),
    (0x00200013, b"IS", b"3\\4"),
    (0x00280010, b"US", b"\x00\x02"),
    (0x00280008, b"IS", b"2 "),
    (0x00080020, b"DA", b"2024.01.15"),
    (0x00100030, b"DA", b"19700101 "),
    (0x00081030, b"LO", b"Caf\xe9"),
]


def _both_ways(ds_for_pydicom: Dataset, ds_for_json: Dataset, layout: Layout) -> None:
    expected = index_values(ds_for_pydicom.get, layout, "1.2")
    converted = dataset_to_json(ds_for_json, PREFIX)
    assert index_values(json_getter(converted), layout, "1.2") == expected


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_corpus_indexes_the_same_values(path: Path) -> None:
    data = path.read_bytes()
    try:
        layout = read_layout(io.BytesIO(data))
        _read(data)
    except Exception:  # noqa: BLE001 - InvalidInstance or pydicom's: not a file the archive takes
        pytest.skip("not a file the archive takes")
    _both_ways(_read(data), _read(data), layout)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_edge_values_index_the_same_values() -> None:
    data = instance_bytes(study_uid=uid("x/st"), series_uid=uid("x/se"), sop_uid=uid("x/i"))
    layout = read_layout(io.BytesIO(data))
    for elements in (EDGES, PEOPLE):
        body = _edge_dataset(elements)
        _both_ways(_read_body(body), _read_body(body), layout)


def test_person_name_groups_are_joined() -> None:
    body = _edge_dataset(PEOPLE)
    get = json_getter(dataset_to_json(_read_body(body), PREFIX))
    assert get("ReferringPhysicianName") == "Smith^John=Sumisu=Phon"
    assert get("PatientName") == ["Yamada^Tarou", "Second^Name"]
    assert get("InstanceNumber") == [3, 4]
    assert get("StudyID") is None
