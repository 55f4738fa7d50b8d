"""Password checks: argon2 once per recent success, a bounded number at once, and a
disabled user refused at once even with a password accepted a moment ago."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dicomvault.access import accounts, passwords
from tests.access.conftest import PASSWORD, World, basic


class _CountingHasher:
    """argon2's hasher, counting the checks that really hash (and how many overlap)."""

    def __init__(self, real: Any, pause: float = 0.0) -> None:
        self.real = real
        self.pause = pause
        self.checks = 0
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def hash(self, password: str) -> str:
        return str(self.real.hash(password))

    def verify(self, stored: str, password: str) -> bool:
        with self._lock:
            self.checks += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.pause)
            return bool(self.real.verify(stored, password))
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture
def hasher(monkeypatch: pytest.MonkeyPatch) -> Iterator[_CountingHasher]:
    counting = _CountingHasher(passwords._hasher)
    monkeypatch.setattr(passwords, "_hasher", counting)
    passwords._recent.clear()
    yield counting
    passwords._recent.clear()


def test_an_accepted_password_is_not_hashed_again(hasher: _CountingHasher) -> None:
    stored = passwords.hash_password("a long password")
    assert passwords.verify_password(stored, "a long password")
    assert passwords.verify_password(stored, "a long password")
    assert passwords.verify_password(stored, "a long password")
    assert hasher.checks == 1


def test_wrong_passwords_are_hashed_every_time_and_never_remembered(
    hasher: _CountingHasher,
) -> None:
    stored = passwords.hash_password("a long password")
    assert passwords.verify_password(stored, "a long password")
    for _ in range(3):
        assert not passwords.verify_password(stored, "a long passworD")
    assert hasher.checks == 4
    assert not passwords.verify_password("not an argon2 hash", "a long password")


def test_a_new_hash_of_the_same_password_is_checked_afresh(hasher: _CountingHasher) -> None:
    first = passwords.hash_password("a long password")
    second = passwords.hash_password("a long password")  # another salt: another hash
    assert first != second
    assert passwords.verify_password(first, "a long password")
    assert passwords.verify_password(second, "a long password")
    assert hasher.checks == 2
    # A remembered success says nothing of another stored hash's password.
    assert not passwords.verify_password(passwords.hash_password("other words"), "a long password")


def test_a_remembered_success_expires(
    hasher: _CountingHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(passwords, "RECENT_SECONDS", 0.0)
    stored = passwords.hash_password("a long password")
    assert passwords.verify_password(stored, "a long password")
    assert passwords.verify_password(stored, "a long password")
    assert hasher.checks == 2


def test_hashes_run_a_bounded_number_at_once(
    hasher: _CountingHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(passwords, "_checks", threading.BoundedSemaphore(2))
    hasher.pause = 0.05
    stored = passwords.hash_password("a long password")
    results: list[bool] = []
    guesses = [
        threading.Thread(target=lambda: results.append(passwords.verify_password(stored, "no")))
        for _ in range(8)
    ]
    for thread in guesses:
        thread.start()
    for thread in guesses:
        thread.join()
    assert results == [False] * 8
    assert hasher.checks == 8
    assert hasher.most_at_once == 2


def test_basic_credentials_on_every_request_hash_once_and_a_disabled_user_is_refused(
    world: World, hasher: _CountingHasher
) -> None:
    url = f"{world.url}/dicom-web/studies"
    with httpx.Client() as client:
        for _ in range(5):
            assert client.get(url, headers=basic("ann")).status_code == 200
        assert hasher.checks == 1
        assert client.get(url, headers=basic("ann", PASSWORD + "!")).status_code == 401
        accounts.set_disabled(world.archive.db, "ann")
        assert client.get(url, headers=basic("ann")).status_code == 401
        accounts.set_disabled(world.archive.db, "ann", False)
        assert client.get(url, headers=basic("ann")).status_code == 200
