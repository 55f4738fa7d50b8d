"""The one policy function, on its own: roles grant actions, sites scope them."""

from __future__ import annotations

import pytest

from dicomvault.access.policy import (
    Action,
    Decision,
    Principal,
    Role,
    SiteInfo,
    ae_principal,
    decide,
    readable_sites,
)

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


def test_a_dimse_peer_has_its_registered_permissions_and_host() -> None:
    """The known-AE registry's flags go through the same decision as users' roles."""
    modality = ae_principal(
        "CT01",
        site="A",
        may_store=True,
        may_query=False,
        may_retrieve=False,
        registered_host="10.0.0.5",
        address="10.0.0.5",
    )
    assert isinstance(modality, Principal)
    assert decide(modality, Action.STORE, directory=DIRECTORY, site="A")
    assert not decide(modality, Action.STORE, directory=DIRECTORY, site="B")
    refused = decide(modality, Action.QUERY, directory=DIRECTORY, any_site=True)
    assert refused.reason == "CT01 may not query"
    assert not decide(modality, Action.DELETE, directory=DIRECTORY, site="A")

    workstation = ae_principal(
        "WS01",
        site="C",
        may_store=False,
        may_query=True,
        may_retrieve=True,
        registered_host=None,
        address="10.9.9.9",
    )
    assert isinstance(workstation, Principal)
    assert readable_sites(workstation, DIRECTORY) == {"C"}
    assert not decide(workstation, Action.RETRIEVE, directory=DIRECTORY, site="B")  # ORG1

    spoofed = ae_principal(
        "CT01",
        site="A",
        may_store=True,
        may_query=True,
        may_retrieve=True,
        registered_host="10.0.0.5",
        address="10.6.6.6",
    )
    assert isinstance(spoofed, Decision)
    assert not spoofed
    assert "registered at 10.0.0.5, not 10.6.6.6" in spoofed.reason
