"""Access control: sites, users, roles, API tokens, OIDC bearer tokens, the one policy
function every door asks, and the hash-chained audit trail.

Submodules are imported where used; this package imports nothing at import time so
that `index.schema` can pull in `access.tables` without a cycle.
"""
