"""STOW-RS admits its caller as every route does, whether the request is small enough
to be read before admission (`stow.READ_BEFORE_ADMIT`) or not: a refused caller gets
the refusal (never a complaint about the body, never a store), audited once; an
admitted one gets the answer its body earns, audited once."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import select

from dicomvault.access.tables import audit
from dicomvault.dicomweb.stow import READ_BEFORE_ADMIT
from dicomvault.index.schema import studies
from dicomvault.synthetic import study_instances, uid
from tests.access.conftest import World, basic
from tests.support.dicom_files import STOW_TYPE, multipart


@dataclass(frozen=True)
class Sent:
    response: httpx.Response
    records: list[dict[str, object]]  # the audit records it left
    stored: bool  # whether its study is in the index


def _records(world: World) -> list[dict[str, object]]:
    with world.archive.db.read() as conn:
        return [dict(r) for r in conn.execute(select(audit).order_by(audit.c.seq)).mappings()]


def _send(
    world: World,
    name: str,
    headers: dict[str, str],
    *,
    size: int,
    parts: int = 1,
    body: bytes | None = None,
    content_type: str = STOW_TYPE,
) -> Sent:
    """A STOW-RS request of `parts` instances of `size` x `size` pixels in a study
    named after `name` (or the raw `body`)."""
    if body is None:
        data = list(study_instances(name, per_series=parts, size=size))
        body = multipart(*(("application/dicom", d) for d in data))
    before = len(_records(world))
    response = httpx.post(
        f"{world.url}/dicom-web/studies",
        headers=headers | {"Content-Type": content_type},
        content=body,
        timeout=30,
    )
    with world.archive.db.read() as conn:
        found = conn.execute(
            select(studies.c.id).where(studies.c.study_uid == uid(f"{name}/study"))
        ).first()
    return Sent(response, _records(world)[before:], found is not None)


# 64 x 64 pixels: a small request, read before admission; 256 x 256 (128 KiB): not.
SIZES = {"small": 64, "large": 256}


@pytest.mark.parametrize("kind", SIZES)
def test_a_request_of_each_size_is_admitted_before_anything_is_stored(
    world: World, kind: str
) -> None:
    size = SIZES[kind]
    probe = len(multipart(("application/dicom", next(study_instances("p", size=size)))))
    assert (probe <= READ_BEFORE_ADMIT) == (kind == "small")

    cases = {
        "nobody": ({}, 401, "permission-denied"),
        "a wrong password": (basic("tom", "not the password"), 401, "login-failed"),
        "a viewer": (basic("vic"), 403, "permission-denied"),
    }
    for who, (headers, status, action) in cases.items():
        for parts in (1, 2):
            sent = _send(world, f"{kind}-{who}-{parts}", headers, size=size, parts=parts)
            assert sent.response.status_code == status, (who, parts, sent.response.text)
            assert not sent.stored, (who, parts)
            assert [(r["action"], r["outcome"]) for r in sent.records] == [
                (action, "failure" if action == "login-failed" else "denied")
            ], (who, parts)

    for parts in (1, 2):
        sent = _send(world, f"{kind}-tom-{parts}", basic("tom"), size=size, parts=parts)
        assert sent.response.status_code == 200, sent.response.text
        assert sent.stored
        assert [(r["action"], r["outcome"], r["actor"]) for r in sent.records] == [
            ("store", "success", "tom")
        ]


BAD_BODIES = {
    "a junk body": (b"not multipart at all", STOW_TYPE, 400),
    "no parts": (b"--XX--\r\n", STOW_TYPE, 400),
    "no closing boundary": (multipart(("application/dicom", b"DICM"), close=False), STOW_TYPE, 400),
    "a wrong type": (b"{}", "application/json", 415),
    "a part of another type": (
        multipart(("application/dicom", b"x")),
        'multipart/related; type="application/json"; boundary=XX',
        415,
    ),
}


def test_a_refused_caller_hears_of_the_refusal_not_of_the_body(world: World) -> None:
    for bad, (body, content_type, status) in BAD_BODIES.items():
        refused = _send(world, "bad", {}, size=0, body=body, content_type=content_type)
        assert refused.response.status_code == 401, (bad, refused.response.text)
        assert [r["action"] for r in refused.records] == ["permission-denied"], bad

        admitted = _send(world, "bad", basic("tom"), size=0, body=body, content_type=content_type)
        assert admitted.response.status_code == status, (bad, admitted.response.text)
        assert [(r["action"], r["outcome"]) for r in admitted.records] == [("store", "failure")], (
            bad
        )
        assert not admitted.stored, bad
