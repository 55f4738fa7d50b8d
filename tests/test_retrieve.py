"""Finding a study's stored instances: the order and the scope of what comes back.

Retrieval (WADO-RS, C-GET, C-MOVE) and metadata read the series rows once and the
instances apart from them; these check that the order and the scope are still the
index's, on both backend pairs.
"""

from __future__ import annotations

import json
from io import BytesIO

import pytest

from dicomvault.archive import Archive
from dicomvault.errors import NotFound
from dicomvault.retrieve import (
    find_instances,
    find_with_headers,
    headers_json,
    instance_header,
    instance_with_header,
)
from dicomvault.synthetic import dataset, to_bytes, uid

STUDY = uid("r/st")
OTHER_STUDY = uid("r/other")

# (series, series number, instance, instance number) in the order they are stored:
# not the order they come back in. None: the attribute is absent.
STORED = [
    ("b", 2, "b2", 2),
    ("n", None, "n1", 1),
    ("a", 1, "a-none", None),
    ("b", 2, "b1", 1),
    ("a", 1, "a3", 3),
    ("a", 1, "a1", 1),
    ("n", None, "n0", 0),
]
# Series by number, unnumbered last; instances by number within a series, unnumbered last.
EXPECTED = ["a1", "a3", "a-none", "b1", "b2", "n0", "n1"]


def _sop(name: str) -> str:
    return uid(f"r/i/{name}")


def _series(name: str) -> str:
    return uid(f"r/se/{name}")


@pytest.fixture
def stored(archive: Archive) -> None:
    for series, series_number, name, number in STORED:
        ds = dataset(
            study_uid=STUDY,
            series_uid=_series(series),
            sop_uid=_sop(name),
            series_number=1 if series_number is None else series_number,
            instance_number=1 if number is None else number,
            size=8,
        )
        if series_number is None:
            del ds.SeriesNumber
        if number is None:
            del ds.InstanceNumber
        archive.ingestor.ingest(BytesIO(to_bytes(ds)))
    other = dataset(study_uid=OTHER_STUDY, series_uid=uid("r/se/other"), sop_uid=_sop("x"))
    archive.ingestor.ingest(BytesIO(to_bytes(other)))


def _sops_of_metadata(archive: Archive, *uids: str) -> list[str]:
    items = json.loads(headers_json(archive.db, "http://archive/dicom-web", *uids))
    return [item["00080018"]["Value"][0] for item in items]


def test_a_study_comes_back_in_series_then_instance_order(archive: Archive, stored: None) -> None:
    expected = [_sop(name) for name in EXPECTED]
    found = find_instances(archive.db, STUDY)
    assert [i.sop_uid for i in found] == expected
    assert _sops_of_metadata(archive, STUDY) == expected
    by_sop = {_sop(name): _series(series) for series, _, name, _ in STORED}
    assert [(i.study_uid, i.series_uid) for i in found] == [(STUDY, by_sop[s]) for s in expected]


def test_a_series_and_an_instance_come_back_alone(archive: Archive, stored: None) -> None:
    series_b = [_sop("b1"), _sop("b2")]
    assert [i.sop_uid for i in find_instances(archive.db, STUDY, _series("b"))] == series_b
    assert _sops_of_metadata(archive, STUDY, _series("b")) == series_b
    [one] = find_instances(archive.db, STUDY, _series("a"), _sop("a3"))
    assert (one.series_uid, one.sop_uid) == (_series("a"), _sop("a3"))
    assert _sops_of_metadata(archive, STUDY, _series("a"), _sop("a3")) == [_sop("a3")]


@pytest.mark.parametrize(
    "uids",
    [
        (uid("r/none"),),  # no such study
        (OTHER_STUDY, _series("a")),  # a series of another study
        (STUDY, _series("b"), _sop("a1")),  # an instance of another series
        (STUDY, _series("a"), _sop("x")),  # an instance of another study
    ],
)
def test_what_is_outside_the_scope_is_not_found(
    archive: Archive, stored: None, uids: tuple[str, ...]
) -> None:
    with pytest.raises(NotFound):
        find_instances(archive.db, *uids)
    with pytest.raises(NotFound):
        headers_json(archive.db, "http://archive/dicom-web", *uids)
    if len(uids) == 3:
        with pytest.raises(NotFound):
            instance_with_header(archive.db, *uids)
    else:
        with pytest.raises(NotFound):
            find_with_headers(archive.db, *uids)


def test_records_read_with_their_headers_are_those_read_apart(
    archive: Archive, stored: None
) -> None:
    together = find_with_headers(archive.db, STUDY)
    assert [stored for stored, _ in together] == find_instances(archive.db, STUDY)
    for stored, header in together:
        uids = (stored.study_uid, stored.series_uid, stored.sop_uid)
        assert header == instance_header(archive.db, *uids)
        assert header["00080018"]["Value"] == [stored.sop_uid]
        assert instance_with_header(archive.db, *uids) == (stored, header)
    in_series = find_with_headers(archive.db, STUDY, _series("b"))
    assert [s.sop_uid for s, _ in in_series] == [_sop("b1"), _sop("b2")]
