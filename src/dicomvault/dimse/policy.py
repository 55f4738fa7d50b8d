"""Who may do what over DIMSE: the one place the door turns a peer into a principal.

The handlers ask `authorize(peer, action)` and turn a refusal into their protocol's
answer (an A-ASSOCIATE-RJ, a 0x0124 "not authorized" status). The decision itself
is the archive's one authorization function (`access.policy.decide`):

- a known peer acts as the principal `ae_principal` makes of its registry row (its
  may_store / may_query / may_retrieve flags, its site, the calling-host check);
- an unknown calling AE is accepted only when the node accepts unknown AEs (by
  default: when it listens on loopback only, like HTTP without login) and then acts
  as the local operator: every action, every site.
"""

from __future__ import annotations

from dataclasses import dataclass

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
from dicomvault.dimse.registry import KnownAE, addresses

__all__ = ["Action", "Peer", "admit", "authorize", "readable"]

_LOCAL_GRANTS = frozenset({Action.QUERY, Action.RETRIEVE, Action.STORE})


@dataclass(frozen=True, slots=True)
class Peer:
    """The calling side of an association: its AE title, address, registry entry (if
    any), and the principal it acts as."""

    calling_aet: str
    address: str
    known: KnownAE | None
    principal: Principal

    @property
    def site(self) -> str | None:
        """The site the peer's instances are filed under (its registry row's)."""
        return self.known.site if self.known is not None else None


def admit(
    calling_aet: str, address: str, known: KnownAE | None, *, accept_unknown: bool
) -> Peer | Decision:
    """The peer an association request comes from, or why it is refused."""
    if known is None:
        if not accept_unknown:
            return Decision(False, f"calling AE {calling_aet!r} is not a known AE")
        local = Principal(
            name=calling_aet or "unknown",
            kind="ae",
            role=Role.SERVICE,
            sites=None,
            address=address,
            grants=_LOCAL_GRANTS,
        )
        return Peer(calling_aet, address, None, local)
    registered = known.host
    if registered and address in addresses(registered):
        registered = address  # the registered name resolves to the calling address
    principal = ae_principal(
        known.ae_title,
        site=known.site,
        may_store=known.may_store,
        may_query=known.may_query,
        may_retrieve=known.may_retrieve,
        registered_host=registered,
        address=address,
    )
    if isinstance(principal, Decision):
        return principal
    return Peer(calling_aet, address, known, principal)


def authorize(peer: Peer, action: Action) -> Decision:
    """May `peer` do `action` at all? (Which studies it reaches is `readable`'s answer.)"""
    return decide(peer.principal, action, any_site=True)


def readable(peer: Peer, directory: list[SiteInfo]) -> frozenset[str] | None:
    """The sites whose studies `peer` may query and retrieve (None: every site)."""
    return readable_sites(peer.principal, directory)
