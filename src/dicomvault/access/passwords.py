"""Password hashes (argon2id, argon2-cffi's defaults): made, and checked at a bounded cost.

An argon2id check is deliberately expensive: with the defaults it takes about 90 ms of
CPU and 64 MiB of memory here. That is right for a login and wrong for every request
of a client that sends HTTP Basic credentials each time (curl -u, the dicomweb-client
package, a viewer): measured before this module, such a client got 12 QIDO-RS answers
a second, and eight of them at once took the server to 643 MB of memory. So:

- a password accepted lately is accepted again without hashing (`RECENT_SECONDS`).
  What is remembered is an HMAC, under a key made at random in each process, of the
  stored hash and the password: nothing kept reveals a password, and a user whose
  stored hash changes no longer matches. Only successes are remembered; the caller
  still reads the user's row each time, so disabling a user takes effect at once;
- at most `CONCURRENT_CHECKS` hashes run at once in a process (the others wait), so a
  burst of logins, or of guesses, cannot take memory without bound.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import OrderedDict

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["RECENT_SECONDS", "hash_password", "verify_password"]

RECENT_SECONDS = 300.0  # how long an accepted password is taken without hashing again
_RECENT_MAX = 4096  # remembered successes per process, the oldest forgotten first
CONCURRENT_CHECKS = max(1, min(4, os.cpu_count() or 1))

_hasher = PasswordHasher()
_checks = threading.BoundedSemaphore(CONCURRENT_CHECKS)


class _Recent:
    """Accepted (stored hash, password) pairs, by their HMAC, with when they expire."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._until: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def _mac(self, stored: str, password: str) -> bytes:
        message = stored.encode() + b"\0" + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def holds(self, stored: str, password: str) -> bool:
        mac = self._mac(stored, password)
        now = time.monotonic()
        with self._lock:
            until = self._until.get(mac)
            if until is None:
                return False
            if until <= now:
                del self._until[mac]
                return False
            return True

    def add(self, stored: str, password: str) -> None:
        mac = self._mac(stored, password)
        with self._lock:
            self._until[mac] = time.monotonic() + RECENT_SECONDS
            self._until.move_to_end(mac)
            while len(self._until) > _RECENT_MAX:
                self._until.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._until.clear()


_recent = _Recent()


def hash_password(password: str) -> str:
    with _checks:
        return _hasher.hash(password)


def verify_password(stored: str, password: str) -> bool:
    """Whether `password` matches the argon2 hash `stored` (False for a malformed hash)."""
    if _recent.holds(stored, password):
        return True
    with _checks:
        try:
            _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False
    _recent.add(stored, password)
    return True
