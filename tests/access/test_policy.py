"""The one policy function, on its own: roles grant actions, sites scope them."""

from __future__ import annotations

import pytest

from dicomvault.access.policy import Action, Principal, Role, SiteInfo, decide, readable_sites

DIRECTORY = [
    SiteInfo("A", "ORG1", org_shared=False),
    SiteInfo("B", "ORG1", org_shared=True),
    SiteInfo("C", "ORG2", org_shared=True),
]


def who(role: Role, *sites: str) -> Principal:
    return Principal("someone", "user", role, frozenset(sites) if sites else None)


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (Role.VIEWER, {Action.QUERY, Action.RETRIEVE}),
        (Role.TECHNOLOGIST, {Action.QUERY, Action.RETRIEVE, Action.STORE}),
        (Role.RADIOLOGIST, {Action.QUERY, Action.RETRIEVE, Action.STORE, Action.EXPORT}),
        (Role.SERVICE, {Action.QUERY, Action.RETRIEVE, Action.STORE}),
        (Role.ADMIN, set(Action)),
    ],
)
def test_roles_grant_actions_at_their_own_site(role: Role, allowed: set[Action]) -> None:
    principal = who(role, "A")
    granted = {a for a in Action if decide(principal, a, directory=DIRECTORY, site="A")}
    assert granted == allowed


def test_sites_scope_reads_and_writes() -> None:
    ann = who(Role.RADIOLOGIST, "A")
    assert readable_sites(ann, DIRECTORY) == {"A", "B"}
    assert decide(ann, Action.RETRIEVE, directory=DIRECTORY, site="B")
    assert not decide(ann, Action.STORE, directory=DIRECTORY, site="B")  # shared is read-only
    assert not decide(ann, Action.RETRIEVE, directory=DIRECTORY, site="C")  # other org
    assert not decide(ann, Action.RETRIEVE, directory=DIRECTORY, site=None)
    assert readable_sites(who(Role.VIEWER, "C"), DIRECTORY) == {"C"}
    admin = who(Role.ADMIN)
    assert readable_sites(admin, DIRECTORY) is None
    assert decide(admin, Action.DELETE, directory=DIRECTORY, site=None)


def test_a_refusal_says_why() -> None:
    decision = decide(who(Role.VIEWER, "A"), Action.STORE, directory=DIRECTORY, site="A")
    assert not decision
    assert decision.reason == "role viewer may not store"


def test_role_names() -> None:
    assert Role.parse("Referrer") is Role.VIEWER
    with pytest.raises(ValueError, match="unknown role 'nurse'"):
        Role.parse("nurse")
