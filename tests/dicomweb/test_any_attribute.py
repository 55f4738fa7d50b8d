"""QIDO-RS matches on any attribute of the stored headers: no declaration step.

Non-level attributes (Slice Thickness, Manufacturer, Image Type), person names
case-insensitively, dates by range, attributes inside a sequence by dotted path,
and private tags by number, at the instance level and as "has an instance that
matches" at the study and series levels, over HTTP on both backend pairs.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomvault.archive import Archive
from dicomvault.model.levels import Level
from dicomvault.query import QueryRequest, resolve_attribute, search
from dicomvault.synthetic import dataset, to_bytes, uid

SOP = "00080018"
STUDY = "0020000D"

# name -> what differs from the synthetic defaults
INSTANCES: dict[str, dict[str, Any]] = {
    "thin": {"SliceThickness": "2.5", "Manufacturer": "ACME Medical", "procedure": "BRAIN MRI"},
    "thick": {"SliceThickness": "5", "Manufacturer": "Other Corp", "procedure": "KNEE"},
    "derived": {
        "SliceThickness": "5",
        "ImageType": ["DERIVED", "SECONDARY"],
        "private": "secret-42",
        "OperatorsName": "Kim^Lee",
        "AcquisitionDate": "20240301",
    },
}


def _sop(name: str) -> str:
    return uid(f"any/{name}/i")


def _instance(name: str, changes: dict[str, Any]) -> bytes:
    ds: Dataset = dataset(
        study_uid=uid(f"any/{name}/st"),
        series_uid=uid(f"any/{name}/se"),
        sop_uid=_sop(name),
        size=8,
    )
    for keyword, value in changes.items():
        if keyword == "procedure":
            item = Dataset()
            item.RequestedProcedureDescription = value
            item.RequestedProcedureID = f"RP-{name}"
            ds.RequestAttributesSequence = Sequence([item])
        elif keyword == "private":
            block = ds.private_block(0x0009, "DVTEST", create=True)
            block.add_new(0x01, "LO", value)
        else:
            setattr(ds, keyword, value)
    return to_bytes(ds)


@pytest.fixture
def loaded(archive: Archive) -> Archive:
    for name, changes in INSTANCES.items():
        archive.ingestor.ingest(BytesIO(_instance(name, changes)))
    return archive


def _found(server: str, path: str, params: dict[str, str], key: str = SOP) -> set[str]:
    response = httpx.get(f"{server}/dicom-web/{path}", params=params, timeout=30)
    assert response.status_code in (200, 204), response.text
    if response.status_code == 204 or not response.content:
        return set()
    return {m[key]["Value"][0] for m in response.json()}


def _names(sops: set[str]) -> set[str]:
    by_sop = {_sop(name): name for name in INSTANCES}
    return {by_sop[s] for s in sops}


CASES: list[tuple[dict[str, str], set[str]]] = [
    ({"00180050": "5"}, {"thick", "derived"}),  # Slice Thickness (DS kept as a number)
    ({"SliceThickness": "2.5"}, {"thin"}),
    ({"SliceThickness": "7"}, set()),
    ({"Manufacturer": "ACME*"}, {"thin"}),
    ({"Manufacturer": "acme*"}, set()),  # not a person name: case-sensitive
    ({"Manufacturer": "Other Corp"}, {"thick"}),
    ({"ImageType": "DERIVED"}, {"derived"}),  # any value of a multi-valued attribute
    ({"ImageType": "ORIGINAL"}, {"thin", "thick"}),
    ({"00400275.00321060": "BRAIN MRI"}, {"thin"}),  # inside a sequence, by tags
    ({"RequestAttributesSequence.RequestedProcedureDescription": "KN?E"}, {"thick"}),
    ({"00091001": "secret-42"}, {"derived"}),  # a private tag, by number
    ({"00091001": "secret-4"}, set()),
    ({"OperatorsName": "KIM*"}, {"derived"}),  # person names: case-insensitive
    ({"AcquisitionDate": "20240101-20240331"}, {"derived"}),
    ({"AcquisitionDate": "20240401-"}, set()),
    ({"SliceThickness": "5", "Manufacturer": "Other*"}, {"thick"}),  # and
    ({"SliceThickness": "*"}, {"thin", "thick", "derived"}),  # universal
]


def test_instances_match_on_any_attribute(loaded: Archive, server: str) -> None:
    wrong = []
    for params, expected in CASES:
        got = _names(_found(server, "instances", params))
        if got != expected:
            wrong.append((params, got, expected))
    assert wrong == []


def test_studies_and_series_match_through_their_instances(loaded: Archive, server: str) -> None:
    studies = _found(server, "studies", {"00091001": "secret-42"}, STUDY)
    assert studies == {uid("any/derived/st")}
    series = _found(server, "series", {"Manufacturer": "ACME*"}, "0020000E")
    assert series == {uid("any/thin/se")}


def test_a_matched_attribute_is_returned(loaded: Archive, server: str) -> None:
    response = httpx.get(
        f"{server}/dicom-web/instances", params={"00091001": "secret-42"}, timeout=30
    )
    (match,) = response.json()
    assert match["00091001"]["Value"] == ["secret-42"]


def test_c_find_uses_the_same_query(loaded: Archive) -> None:
    """The query builder itself (which C-FIND calls) matches a private tag by value."""
    request = QueryRequest(level=Level.INSTANCE, filters={"00091001": "secret-42"})
    result = search(loaded.db, request, max_results=10)
    assert [m[SOP]["Value"][0] for m in result.matches] == [_sop("derived")]


def test_a_dotted_path_resolves_keywords_and_refuses_unknown_ones() -> None:
    assert resolve_attribute("RequestAttributesSequence.00321060") == "00400275.00321060"
    with pytest.raises(Exception, match="unknown attribute"):
        resolve_attribute("RequestAttributesSequence.NoSuchKeyword")
