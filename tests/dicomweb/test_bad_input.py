"""Bad input over HTTP: a clear error, nothing stored, and the server keeps serving.

Every case is followed by a good STOW-RS request that must succeed, on both
backend pairs, against the live server.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dicomvault.archive import Archive
from dicomvault.config import Settings
from dicomvault.model.status import FailureReason
from dicomvault.synthetic import uid
from tests.parsing.test_layout import assert_nothing_stored
from tests.support.dicom_files import BAD_FILES, STOW_TYPE, good, multipart
from tests.support.live import running_server

FAILED = "00081198"
REFERENCED = "00081199"
REASON = "00081197"
COMMENT = "00000902"
SOP_INSTANCE = "00081155"


def _stow(base: str, body: bytes, content_type: str = STOW_TYPE, path: str = "") -> httpx.Response:
    return httpx.post(
        f"{base}/dicom-web/studies{path}",
        content=body,
        headers={"Content-Type": content_type},
        timeout=30,
    )


def assert_still_serving(base: str, name: str = "after") -> None:
    """A good instance is stored right after the bad request, and found again."""
    response = _stow(base, multipart(("application/dicom", good(name))))
    assert response.status_code == 200, response.text
    stored = response.json()[REFERENCED]["Value"]
    assert [item[SOP_INSTANCE]["Value"][0] for item in stored] == [uid(f"{name}/i")]
    found = httpx.get(f"{base}/dicom-web/studies", params={"StudyInstanceUID": uid(f"{name}/st")})
    assert len(found.json()) == 1


def _failures(response: httpx.Response) -> list[tuple[int, str]]:
    return [
        (item[REASON]["Value"][0], item.get(COMMENT, {}).get("Value", [""])[0])
        for item in response.json()[FAILED]["Value"]
    ]


def test_every_bad_instance_over_stow_is_400_with_its_reason(archive: Archive, server: str) -> None:
    """The corpus of tests/support/dicom_files.py, one request each (one server, for speed)."""
    problems = []
    for case, bad in sorted(BAD_FILES.items()):
        response = _stow(server, multipart(("application/dicom", bad.data)))
        if response.status_code != 400:
            problems.append(f"{case}: {response.status_code} {response.text[:200]}")
            continue
        assert response.headers["content-type"].startswith("application/dicom+json")
        assert REFERENCED not in response.json()
        [(reason, comment)] = _failures(response)
        if reason != FailureReason.CANNOT_UNDERSTAND or not re.search(bad.reason, comment):
            problems.append(f"{case}: reason {reason:#06x} {comment!r}")
        assert_nothing_stored(archive)
    assert problems == []
    assert_still_serving(server)


def test_non_dicom_part_fails_alone_and_the_others_are_stored(
    archive: Archive, server: str
) -> None:
    body = multipart(
        ("application/dicom", good("p1")),
        ("text/plain", b"a note, not an image"),
        ("application/dicom", good("p2")),
        ("application/dicom", b"garbage" * 40),
    )
    response = _stow(server, body)
    assert response.status_code == 202, response.text
    result = response.json()
    stored = [item[SOP_INSTANCE]["Value"][0] for item in result[REFERENCED]["Value"]]
    assert stored == [uid("p1/i"), uid("p2/i")]
    failures = _failures(response)
    assert [reason for reason, _ in failures] == [FailureReason.CANNOT_UNDERSTAND] * 2
    assert "text/plain" in failures[0][1]
    assert "DICM" in failures[1][1]
    assert len(list(archive.store.list())) == 2


MALFORMED = [  # (what, body, Content-Type, status, pattern of the error message)
    (
        "junk before the first boundary",
        b"junk before\r\n" + multipart(("application/dicom", good("j"))),
        STOW_TYPE,
        400,
        "malformed multipart",
    ),
    (
        "no closing boundary after two complete parts",
        multipart(("application/dicom", good("c1")), ("application/dicom", good("c2")))[:-8],
        STOW_TYPE,
        400,
        "closing boundary",
    ),
    (
        "body cut inside a part",
        multipart(("application/dicom", good("c3")))[:600],
        STOW_TYPE,
        400,
        "closing boundary",
    ),
    ("empty body", b"", STOW_TYPE, 400, "closing boundary"),
    ("no parts", b"--XX--\r\n", STOW_TYPE, 400, "no parts"),
    (
        "no boundary parameter",
        multipart(("application/dicom", good("b"))),
        'multipart/related; type="application/dicom"',
        400,
        "boundary",
    ),
    ("a bare DICOM file", good("single"), "application/dicom", 415, "multipart/related"),
    (
        "multipart/form-data",
        multipart(("application/dicom", good("f"))),
        "multipart/form-data; boundary=XX",
        415,
        "multipart/related",
    ),
    ("no Content-Type", multipart(("application/dicom", good("n"))), "", 415, "multipart"),
    (
        "type=application/dicom+json",
        multipart(("application/dicom", good("t"))),
        'multipart/related; type="application/dicom+json"; boundary=XX',
        415,
        "application/dicom\\+json",
    ),
    (
        "type=image/jpeg",
        multipart(("application/dicom", good("t2"))),
        "multipart/related; type=image/jpeg; boundary=XX",
        415,
        "image/jpeg",
    ),
]


def test_malformed_requests_are_refused_and_store_nothing(archive: Archive, server: str) -> None:
    problems = []
    for what, body, content_type, status, message in MALFORMED:
        response = _stow(server, body, content_type)
        if response.status_code != status:
            problems.append(f"{what}: {response.status_code} {response.text[:200]}")
        elif not re.search(message, response.json()["error"]):
            problems.append(f"{what}: {response.json()}")
        assert_nothing_stored(archive)
    assert problems == []
    assert_still_serving(server)


@pytest.fixture
def small_server(settings: Settings) -> Iterator[tuple[Archive, str]]:
    """A live server whose request body limit is 64 KiB."""
    archive = Archive.open(settings.model_copy(update={"max_request_bytes": 64 * 1024}))
    try:
        with running_server(archive) as base:
            yield archive, base
    finally:
        archive.close()


def test_content_length_over_the_limit_is_413_before_the_body_is_read(
    small_server: tuple[Archive, str],
) -> None:
    archive, base = small_server
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # A terabyte announced, not one byte of it sent: the answer cannot wait for it.
        sock.sendall(
            (
                "POST /dicom-web/studies HTTP/1.1\r\n"
                f"Host: {host}\r\nContent-Type: {STOW_TYPE}\r\n"
                f"Content-Length: {10**12}\r\n\r\n"
            ).encode()
        )
        started = time.monotonic()
        answer = _read_response_head(sock)
    assert time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"65536-byte limit" in answer
    assert_nothing_stored(archive)
    assert_still_serving(base)


def _read_response_head(sock: socket.socket) -> bytes:
    """The status line, headers and (Content-Length) body of one response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_chunked_body_growing_past_the_limit_is_413(
    small_server: tuple[Archive, str],
) -> None:
    archive, base = small_server

    def body() -> Iterator[bytes]:  # chunked: no Content-Length to check up front
        yield multipart(("application/dicom", good("grow")), close=False)
        for _ in range(64):  # 64 more parts of 4 KiB: past 64 KiB, never closed
            yield b"--XX\r\nContent-Type: application/dicom\r\n\r\n" + bytes(4096) + b"\r\n"

    try:
        response = httpx.post(
            f"{base}/dicom-web/studies",
            content=body(),
            headers={"Content-Type": STOW_TYPE},
            timeout=30,
        )
    except httpx.WriteError:
        pass  # the server answered and closed while the client was still sending: also fine
    else:
        assert response.status_code == 413, response.text
        assert "65536-byte limit" in response.json()["error"]
    assert_nothing_stored(archive)
    assert_still_serving(base)


def test_stow_to_a_study_url_refuses_an_instance_of_another_study(
    archive: Archive, server: str
) -> None:
    target = uid("target/st")
    response = _stow(server, multipart(("application/dicom", good("other"))), path=f"/{target}")
    assert response.status_code == 409, response.text
    [(reason, comment)] = _failures(response)
    assert reason == FailureReason.DATASET_DOES_NOT_MATCH
    assert uid("other/st") in comment
    assert target in comment
    assert_nothing_stored(archive)

    mixed = _stow(
        server,
        multipart(("application/dicom", good("target")), ("application/dicom", good("o2"))),
        path=f"/{target}",
    )
    assert mixed.status_code == 202
    assert [i[SOP_INSTANCE]["Value"][0] for i in mixed.json()[REFERENCED]["Value"]] == [
        uid("target/i")
    ]
    assert_still_serving(server)


BAD_URL_UIDS = [
    ("POST", "/studies/1.2.abc"),
    ("GET", "/studies/1.2.abc/series"),
    ("GET", "/studies/1.2.3/series/1..2/instances"),
    ("GET", "/studies/1.2.abc"),
    ("GET", "/studies/1.2.3/series/4.5/instances/9.9x"),
    ("GET", "/studies/01.2/metadata"),
    ("GET", f"/studies/1.{'2' * 70}/metadata"),
    ("GET", "/studies/1.2%00.3/series"),
    ("GET", "/studies/1.2%0D%0A.3"),
]


def test_an_invalid_uid_in_the_url_is_400(archive: Archive, server: str) -> None:
    problems = []
    for method, path in BAD_URL_UIDS:
        kwargs: dict[str, Any] = {}
        if method == "POST":
            kwargs = {
                "content": multipart(("application/dicom", good("u"))),
                "headers": {"Content-Type": STOW_TYPE},
            }
        response = httpx.request(method, f"{server}/dicom-web{path}", **kwargs)
        if response.status_code != 400 or not re.search(
            "not a valid UID|longer than 64", response.json()["error"]
        ):
            problems.append(f"{method} {path}: {response.status_code} {response.text[:200]}")
    assert problems == []
    assert_nothing_stored(archive)
    assert_still_serving(server)
