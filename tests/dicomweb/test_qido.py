"""QIDO-RS: matching per PS3.4 C.2.2.2 at every level, returned attributes, paging, errors.

Four studies are stored, then searched over HTTP (httpx and dicomweb-client)
on both backend pairs. Each table test runs all its cases and reports every
mismatch at once.
"""

from __future__ import annotations

import re
from io import BytesIO
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient

from dicomvault.archive import Archive
from dicomvault.model.levels import Level
from dicomvault.query import QueryRequest, search
from dicomvault.synthetic import dataset, to_bytes, uid

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"

# study -> patient, study attributes, and its series: (modality, number of instances)
STUDIES: dict[str, dict[str, Any]] = {
    "a": {
        "patient_name": "Doe^Jane",
        "study_date": "20240115",
        "time": "101500",
        "description": "CT CHEST",
        "series": [("CT", 2), ("SR", 1)],
    },
    "b": {
        "patient_name": "DOE^JOHN",
        "study_date": "20240320",
        "time": "083000",
        "description": "MR KNEE",
        "series": [("MR", 2)],
    },
    "c": {
        "patient_name": "Roe^Richard",
        "study_date": "20231201",
        "time": "101530.25",
        "description": "CT HEAD",
        "series": [("CT", 1)],
    },
    "d": {
        "patient_name": None,
        "study_date": "20240601",
        "time": "235959",
        "description": "US ABDOMEN",
        "series": [("US", 1)],
    },
}
ALL = set(STUDIES)


def _sop(study: str, series: int, number: int) -> str:
    return uid(f"{study}/{series}/{number}")


@pytest.fixture
def loaded(archive: Archive) -> Archive:
    for name, spec in STUDIES.items():
        for s, (modality, count) in enumerate(spec["series"]):
            for i in range(count):
                ds = dataset(
                    study_uid=uid(f"{name}/st"),
                    series_uid=uid(f"{name}/se{s}"),
                    sop_uid=_sop(name, s, i),
                    patient_id=f"PID-{name}",
                    patient_name=spec["patient_name"] or "",
                    study_date=spec["study_date"],
                    study_description=spec["description"],
                    accession=f"ACC-{name}",
                    modality=modality,
                    series_number=s + 1,
                    instance_number=i + 1,
                    size=8,
                )
                ds.StudyTime = spec["time"]
                if spec["patient_name"] is None:
                    del ds.PatientName
                if modality == "SR":
                    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
                archive.ingestor.ingest(BytesIO(to_bytes(ds)))
    return archive


def _get(server: str, path: str, params: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(f"{server}/dicom-web{path}", params=params)


def _studies(found: list[dict[str, Any]]) -> set[str]:
    by_uid = {uid(f"{n}/st"): n for n in STUDIES}
    return {by_uid[m["0020000D"]["Value"][0]] for m in found}


def _series(found: list[dict[str, Any]]) -> set[str]:
    by_uid = {uid(f"{n}/se{s}"): f"{n}{s}" for n in STUDIES for s in range(2)}
    return {by_uid[m["0020000E"]["Value"][0]] for m in found}


def _instances(found: list[dict[str, Any]]) -> set[str]:
    by_uid = {_sop(n, s, i): f"{n}{s}.{i}" for n in STUDIES for s in range(2) for i in range(2)}
    return {by_uid[m["00080018"]["Value"][0]] for m in found}


def _run(server: str, cases: list[tuple[str, dict[str, str], set[str]]], names: Any) -> None:
    problems = []
    for path, params, expected in cases:
        response = _get(server, path, params)
        if response.status_code != 200:
            problems.append(f"{path} {params}: {response.status_code} {response.text}")
            continue
        got = names(response.json())
        if got != expected:
            problems.append(f"{path} {params}: {sorted(got)} != {sorted(expected)}")
    assert problems == []


STUDY_CASES: list[tuple[dict[str, str], set[str]]] = [
    ({}, ALL),
    # person names: case-insensitive, single value and wildcards
    ({"PatientName": "doe^jane"}, {"a"}),
    ({"PatientName": "DOE^JANE"}, {"a"}),
    ({"PatientName": "doe*"}, {"a", "b"}),
    ({"PatientName": "DOE^JAN?"}, {"a"}),
    ({"PatientName": "?OE^*"}, {"a", "b", "c"}),
    ({"PatientName": "*"}, ALL),  # "*" alone is universal: the nameless study too
    ({"PatientName": ""}, ALL),
    ({"PatientName": "doe"}, set()),  # single value matching is the whole value
    ({"ReferringPhysicianName": "smith^john"}, ALL),
    # fuzzy matching: any name component, by prefix
    ({"PatientName": "jo", "fuzzymatching": "true"}, {"b"}),
    ({"PatientName": "doe", "fuzzymatching": "true"}, {"a", "b"}),
    ({"PatientName": "RICH", "fuzzymatching": "true"}, {"c"}),
    ({"PatientName": "oe", "fuzzymatching": "true"}, set()),
    ({"PatientName": "jo", "fuzzymatching": "false"}, set()),
    # other strings match case-sensitively
    ({"AccessionNumber": "ACC-a"}, {"a"}),
    ({"AccessionNumber": "acc-a"}, set()),
    ({"AccessionNumber": "ACC-?"}, ALL),
    ({"00080050": "ACC-b"}, {"b"}),
    ({"StudyDescription": "*HEAD"}, {"c"}),
    ({"StudyDescription": "CT*"}, {"a", "c"}),
    ({"StudyDescription": "*%*"}, set()),  # SQL wildcards are literal characters
    ({"StudyDescription": "CT_CHEST"}, set()),
    ({"PatientID": "PID-d"}, {"d"}),
    # dates and times: single value and ranges
    ({"StudyDate": "20240115"}, {"a"}),
    ({"StudyDate": "20240101-20241231"}, {"a", "b", "d"}),
    ({"StudyDate": "20240115-20240320"}, {"a", "b"}),  # both ends included
    ({"StudyDate": "-20231231"}, {"c"}),
    ({"StudyDate": "20240301-"}, {"b", "d"}),
    ({"StudyDate": "20250101-"}, set()),
    ({"StudyTime": "1000-1100"}, {"a", "c"}),
    ({"StudyTime": "101500-101530"}, {"a", "c"}),  # 101530.25 is within 10:15:30
    ({"StudyTime": "2300-"}, {"d"}),
    ({"StudyTime": "-0900"}, {"b"}),
    # UID lists, either separator
    ({"StudyInstanceUID": f"{uid('a/st')},{uid('c/st')}"}, {"a", "c"}),
    ({"0020000D": f"{uid('b/st')}\\{uid('d/st')}\\1.2.3.4"}, {"b", "d"}),
    ({"StudyInstanceUID": uid("a/st")}, {"a"}),
    # modalities of the study's series
    ({"ModalitiesInStudy": "MR"}, {"b"}),
    ({"ModalitiesInStudy": "SR"}, {"a"}),
    ({"ModalitiesInStudy": "CT\\US"}, {"a", "c", "d"}),
    ({"ModalitiesInStudy": "MR,US"}, {"b", "d"}),
    ({"ModalitiesInStudy": "C*"}, {"a", "c"}),
    # several keys: all must match
    ({"PatientName": "doe*", "StudyDate": "-20240201"}, {"a"}),
    ({"ModalitiesInStudy": "CT", "StudyDescription": "*HEAD"}, {"c"}),
]


def test_study_matching(loaded: Archive, server: str) -> None:
    _run(server, [("/studies", p, e) for p, e in STUDY_CASES], _studies)


def test_series_matching_at_the_top_and_nested_in_a_study(loaded: Archive, server: str) -> None:
    cases = [
        ("/series", {}, {"a0", "a1", "b0", "c0", "d0"}),
        ("/series", {"Modality": "MR"}, {"b0"}),
        ("/series", {"Modality": "C?"}, {"a0", "c0"}),
        ("/series", {"SeriesNumber": "2"}, {"a1"}),
        ("/series", {"SeriesDescription": "CT series*"}, {"a0", "c0"}),
        ("/series", {"PatientName": "roe*"}, {"c0"}),  # an upper level's key
        ("/series", {"StudyDate": "20240101-20240331"}, {"a0", "a1", "b0"}),
        ("/series", {"SeriesInstanceUID": f"{uid('a/se1')},{uid('d/se0')}"}, {"a1", "d0"}),
        (f"/studies/{uid('a/st')}/series", {}, {"a0", "a1"}),
        (f"/studies/{uid('a/st')}/series", {"Modality": "SR"}, {"a1"}),
        (f"/studies/{uid('a/st')}/series", {"Modality": "MR"}, set()),
        (f"/studies/{uid('b/st')}/series", {"SeriesInstanceUID": uid("a/se0")}, set()),
        ("/studies/1.2.3.4/series", {}, set()),
    ]
    _run(server, cases, _series)


def test_instance_matching_at_the_top_and_nested(loaded: Archive, server: str) -> None:
    a, a0, b0 = uid("a/st"), uid("a/se0"), uid("b/se0")
    cases = [
        ("/instances", {"InstanceNumber": "2"}, {"a0.1", "b0.1"}),
        ("/instances", {"SOPClassUID": SECONDARY_CAPTURE}, {"a1.0"}),
        ("/instances", {"Modality": "MR"}, {"b0.0", "b0.1"}),
        (
            "/instances",
            {"SOPInstanceUID": f"{_sop('a', 0, 0)}\\{_sop('d', 0, 0)}"},
            {"a0.0", "d0.0"},
        ),
        ("/instances", {"PatientName": "*ich*"}, {"c0.0"}),
        (f"/studies/{a}/instances", {}, {"a0.0", "a0.1", "a1.0"}),
        (f"/studies/{a}/instances", {"InstanceNumber": "2"}, {"a0.1"}),
        (f"/studies/{a}/series/{a0}/instances", {}, {"a0.0", "a0.1"}),
        (f"/studies/{a}/series/{a0}/instances", {"SOPClassUID": CT_IMAGE}, {"a0.0", "a0.1"}),
        (f"/studies/{a}/series/{b0}/instances", {}, set()),  # a series of another study
    ]
    _run(server, cases, _instances)


def test_returned_attributes_at_each_level(loaded: Archive, server: str) -> None:
    study_uid, series_uid = uid("a/st"), uid("a/se0")
    [study] = _get(server, "/studies", {"StudyInstanceUID": study_uid}).json()
    assert study["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    assert study["00100020"] == {"vr": "LO", "Value": ["PID-a"]}
    assert study["00080020"] == {"vr": "DA", "Value": ["20240115"]}
    assert study["00080030"] == {"vr": "TM", "Value": ["101500"]}
    assert study["00080050"] == {"vr": "SH", "Value": ["ACC-a"]}
    assert study["00081030"] == {"vr": "LO", "Value": ["CT CHEST"]}
    assert study["00080061"] == {"vr": "CS", "Value": ["CT", "SR"]}
    assert study["00201206"] == {"vr": "IS", "Value": [2]}
    assert study["00201208"] == {"vr": "IS", "Value": [3]}
    assert study["00081190"] == {"vr": "UR", "Value": [f"{server}/dicom-web/studies/{study_uid}"]}
    assert "00080060" not in study  # no series-level attributes at study level
    [nameless] = _get(server, "/studies", {"PatientID": "PID-d"}).json()
    assert nameless["00100010"] == {"vr": "PN"}  # present, empty

    series = _get(server, f"/studies/{study_uid}/series", {"Modality": "CT"}).json()
    assert [
        (s["0020000E"]["Value"], s["00200011"]["Value"], s["00201209"]["Value"]) for s in series
    ] == [([series_uid], [1], [2])]
    assert series[0]["00081190"]["Value"] == [
        f"{server}/dicom-web/studies/{study_uid}/series/{series_uid}"
    ]

    instances = _get(server, f"/studies/{study_uid}/series/{series_uid}/instances").json()
    assert [i["00200013"]["Value"] for i in instances] == [[1], [2]]
    first = instances[0]
    assert first["00080016"]["Value"] == [CT_IMAGE]
    assert first["00280010"]["Value"] == [8]
    assert first["00081190"]["Value"] == [
        f"{server}/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{_sop('a', 0, 0)}"
    ]
    assert list(first) == sorted(first)  # tags in order, as DICOM JSON expects


def test_includefield_by_keyword_by_tag_and_all(loaded: Archive, server: str) -> None:
    path = f"/studies/{uid('a/st')}/series/{uid('a/se0')}/instances"
    plain = _get(server, path).json()[0]
    assert "00180050" not in plain
    assert "00080070" not in plain

    picked = httpx.get(
        f"{server}/dicom-web{path}",
        params=[("includefield", "SliceThickness"), ("includefield", "00080070,BodyPartExamined")],
    ).json()[0]
    assert picked["00180050"] == {"vr": "DS", "Value": [5]}
    assert picked["00080070"] == {"vr": "LO", "Value": ["DICOMVAULT SYNTHETIC"]}
    assert picked["00180015"] == {"vr": "CS", "Value": ["CHEST"]}

    everything = _get(server, path, {"includefield": "all"}).json()[0]
    assert everything["00280030"] == {"vr": "DS", "Value": [0.7, 0.7]}
    assert everything["00200037"]["Value"] == [1, 0, 0, 0, 1, 0]
    assert "7FE00010" not in everything  # never bulk data in a search result

    study = _get(
        server, "/studies", {"PatientID": "PID-b", "includefield": "Manufacturer,SeriesDescription"}
    ).json()[0]
    assert study["00080070"]["Value"] == ["DICOMVAULT SYNTHETIC"]
    assert study["0008103E"]["Value"] == ["MR series 1"]

    missing = _get(server, path, {"includefield": "PatientComments"}).json()[0]
    assert missing["00104000"] == {"vr": "LT"}  # asked for, absent: an empty attribute


def test_paging_with_limit_and_offset(loaded: Archive, server: str) -> None:
    pages, offset = [], 0
    while True:
        response = _get(server, "/instances", {"limit": "3", "offset": str(offset)})
        assert response.status_code == 200
        page = response.json()
        cut = "warning" in response.headers
        pages.append((len(page), cut))
        if cut:
            assert response.headers["warning"].startswith("299 ")
            assert "offset" in response.headers["warning"]
        offset += len(page)
        if not cut:
            break
    assert pages == [(3, True), (3, True), (1, False)]
    every = _instances(_get(server, "/instances").json())
    assert len(every) == 7
    seen: list[str] = []
    for start in range(0, 7, 3):
        seen += _instances(_get(server, "/instances", {"limit": "3", "offset": str(start)}).json())
    assert sorted(seen) == sorted(every)  # no instance twice, none lost
    assert _get(server, "/studies", {"offset": "10"}).json() == []
    exact = _get(server, "/studies", {"limit": "4"})
    assert len(exact.json()) == 4
    assert "warning" not in exact.headers  # exactly all: nothing was cut


def test_the_server_maximum_caps_a_larger_limit(loaded: Archive) -> None:
    result = search(
        loaded.db, QueryRequest(level=Level.INSTANCE, limit=50), max_results=4, retrieve_base=None
    )
    assert len(result.matches) == 4
    assert result.more
    assert any("maximum of 4" in w for w in result.warnings)
    whole = search(loaded.db, QueryRequest(level=Level.INSTANCE), max_results=7)
    assert (len(whole.matches), whole.more) == (7, False)


def test_dicomweb_client_searches(loaded: Archive, server: str) -> None:
    client = DICOMwebClient(f"{server}/dicom-web")
    assert _studies(client.search_for_studies(search_filters={"PatientName": "DOE*"})) == {
        "a",
        "b",
    }
    assert _studies(
        client.search_for_studies(search_filters={"PatientName": "ric"}, fuzzymatching=True)
    ) == {"c"}
    assert _series(client.search_for_series(uid("a/st"), search_filters={"Modality": "SR"})) == {
        "a1"
    }
    found = client.search_for_instances(
        uid("b/st"), uid("b/se0"), fields=["SliceThickness", "00080070"]
    )
    assert [i["00180050"]["Value"] for i in found] == [[5], [5]]
    page = client.search_for_instances(limit=2, offset=5)
    assert len(page) == 2


BAD_QUERIES: list[tuple[dict[str, str], dict[str, str], int, str]] = [
    # (query parameters, headers, status, pattern of the error message)
    ({"NoSuchKeyword": "x"}, {}, 400, "NoSuchKeyword"),
    ({"includefield": "NoSuchKeyword"}, {}, 400, "NoSuchKeyword"),
    ({"0010001": "x"}, {}, 400, "unknown attribute"),
    ({"limit": "abc"}, {}, 400, "limit"),
    ({"limit": "-1"}, {}, 400, "limit"),
    ({"limit": "0"}, {}, 400, "limit"),
    ({"limit": "1.5"}, {}, 400, "limit"),
    ({"limit": "1_0"}, {}, 400, "limit"),
    ({"offset": "-1"}, {}, 400, "offset"),
    ({"offset": "99999999999999999999"}, {}, 400, "offset"),
    ({"fuzzymatching": "maybe"}, {}, 400, "fuzzymatching"),
    ({"StudyDate": "2024-01-01"}, {}, 400, "DA"),
    ({"StudyDate": "-"}, {}, 400, "range"),
    ({"StudyDate": "2024*"}, {}, 400, "DA"),
    ({"StudyTime": "10h15"}, {}, 400, "TM"),
    ({"NumberOfStudyRelatedInstances": "many"}, {}, 400, "not a number"),
    ({}, {"Accept": "application/dicom+xml"}, 406, "application/dicom\\+json"),
    ({}, {"Accept": 'multipart/related; type="application/dicom+xml"'}, 406, "json"),
]


def test_bad_queries_are_refused_with_a_reason(loaded: Archive, server: str) -> None:
    problems = []
    for params, headers, status, message in BAD_QUERIES:
        response = httpx.get(f"{server}/dicom-web/studies", params=params, headers=headers)
        if response.status_code != status or not re.search(message, response.json()["error"]):
            problems.append(f"{params} {headers}: {response.status_code} {response.text}")
    assert problems == []


def test_the_same_key_twice_is_refused(loaded: Archive, server: str) -> None:
    response = httpx.get(
        f"{server}/dicom-web/studies", params=[("PatientID", "PID-a"), ("PatientID", "PID-b")]
    )
    assert response.status_code == 400
    assert "twice" in response.json()["error"]


def test_json_is_accepted_in_every_usual_spelling(loaded: Archive, server: str) -> None:
    for accept in ("application/dicom+json", "application/json", "*/*", "application/*", ""):
        response = httpx.get(f"{server}/dicom-web/studies", headers={"Accept": accept})
        assert response.status_code == 200, accept
        assert response.headers["content-type"] == "application/dicom+json"
        assert len(response.json()) == 4
