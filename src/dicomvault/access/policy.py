"""The one authorization function: every door (DICOMweb, DIMSE, the management API,
later ones) asks `decide` and filters searches by `readable_sites`.

Who may do what:

- A role grants actions (`GRANTS`): a viewer/referrer queries and retrieves, a
  technologist also stores, a radiologist also exports, a service account stores,
  queries and retrieves, an admin does everything including managing users.
- Sites scope them. A principal reads the studies of its own sites and of the sites of
  the same organization that share their studies organization-wide (`org_shared`); it
  stores only at its own sites. A principal with no site restriction (`sites is None`:
  an organization-wide admin, or the local operator on a loopback-only server without
  authentication) reaches every site.
- A study whose site is unknown is reachable only without a site restriction.

A refusal says why in plain words, for the audit trail; the door decides how much of
it the caller sees (a study of another site is reported as not found).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "GRANTS",
    "Action",
    "Decision",
    "Principal",
    "Role",
    "SiteInfo",
    "ae_principal",
    "decide",
    "readable_sites",
]


class Role(StrEnum):
    ADMIN = "admin"
    RADIOLOGIST = "radiologist"
    TECHNOLOGIST = "technologist"
    VIEWER = "viewer"  # also called referrer: reads what it is shown, changes nothing
    SERVICE = "service"  # an integration (a modality router, a script), not a person

    @classmethod
    def parse(cls, value: str) -> Role:
        name = value.strip().lower()
        if name == "referrer":
            return cls.VIEWER
        try:
            return cls(name)
        except ValueError:
            choices = ", ".join([*(r.value for r in cls), "referrer"])
            raise ValueError(f"unknown role {value!r}: use one of {choices}") from None


class Action(StrEnum):
    QUERY = "query"
    RETRIEVE = "retrieve"
    STORE = "store"
    DELETE = "delete"
    EXPORT = "export"
    MANAGE = "manage"  # users, sites, tokens


GRANTS: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.RADIOLOGIST: frozenset({Action.QUERY, Action.RETRIEVE, Action.STORE, Action.EXPORT}),
    Role.TECHNOLOGIST: frozenset({Action.QUERY, Action.RETRIEVE, Action.STORE}),
    Role.VIEWER: frozenset({Action.QUERY, Action.RETRIEVE}),
    Role.SERVICE: frozenset({Action.QUERY, Action.RETRIEVE, Action.STORE}),
}

_READS = frozenset({Action.QUERY, Action.RETRIEVE, Action.EXPORT})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a user, an API token, an OIDC subject, a DIMSE peer, or the local
    operator. `sites` None means no site restriction."""

    name: str
    kind: str  # user | token | oidc | ae | local
    role: Role
    sites: frozenset[str] | None
    address: str | None = None
    # Actions granted one by one instead of by role (a DIMSE peer's may_store /
    # may_query / may_retrieve in the known-AE registry); None: the role's.
    grants: frozenset[Action] | None = None


@dataclass(frozen=True, slots=True)
class SiteInfo:
    code: str
    organization: str
    org_shared: bool


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.allowed


def readable_sites(principal: Principal, directory: Iterable[SiteInfo]) -> frozenset[str] | None:
    """The sites whose studies `principal` may see (None: every site, unknown ones too)."""
    if principal.sites is None:
        return None
    known = {site.code: site for site in directory}
    organizations = {known[code].organization for code in principal.sites if code in known}
    shared = {
        site.code
        for site in known.values()
        if site.org_shared and site.organization in organizations
    }
    return frozenset(principal.sites) | shared


def decide(
    principal: Principal,
    action: Action,
    *,
    directory: Iterable[SiteInfo] = (),
    site: str | None = None,
    any_site: bool = False,
) -> Decision:
    """May `principal` do `action` on data of `site`?

    `any_site=True` asks only whether the role allows the action at all (a search,
    whose results are then filtered by `readable_sites`). Otherwise `site` is the site
    of the study touched (None: a study whose site is unknown).
    """
    granted = principal.grants if principal.grants is not None else GRANTS[principal.role]
    if action not in granted:
        who = principal.name if principal.grants is not None else f"role {principal.role.value}"
        return Decision(False, f"{who} may not {action.value}")
    if any_site or principal.sites is None:
        return Decision(True)
    if site is None:
        return Decision(
            False, f"{action.value} of a study without a site needs access to every site"
        )
    reachable = readable_sites(principal, directory) if action in _READS else principal.sites
    if reachable is not None and site not in reachable:
        return Decision(False, f"site {site} is not one of {principal.name}'s sites")
    return Decision(True)


def ae_principal(
    ae_title: str,
    *,
    site: str | None,
    may_store: bool,
    may_query: bool,
    may_retrieve: bool,
    registered_host: str | None,
    address: str | None,
) -> Principal | Decision:
    """The principal a known DIMSE peer acts as, or a refusal when it calls from a host
    other than the one registered for its AE title (the calling-host check).

    A peer with a site reaches that site (and what its organization shares, for
    reads); one registered without a site reaches every site, as the local operator.
    """
    if registered_host and address and registered_host != address:
        return Decision(False, f"AE {ae_title} is registered at {registered_host}, not {address}")
    flags = ((may_store, Action.STORE), (may_query, Action.QUERY), (may_retrieve, Action.RETRIEVE))
    return Principal(
        name=ae_title,
        kind="ae",
        role=Role.SERVICE,
        sites=frozenset({site}) if site is not None else None,
        address=address,
        grants=frozenset(action for allowed, action in flags if allowed),
    )
