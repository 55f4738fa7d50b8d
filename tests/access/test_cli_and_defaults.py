"""`dicomvault sites|users` for real, and the secure defaults of `dicomvault serve`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx

from dicomvault.access import accounts
from dicomvault.config import Settings
from dicomvault.index.db import Database
from tests.support.cli import command_env, dicomvault
from tests.support.live import free_port, wait_for_health


def test_sites_and_users_commands(settings: Settings) -> None:
    env = command_env(settings) | {"DICOMVAULT_NEW_PASSWORD": "a long password"}
    run = lambda *args: dicomvault(*args, env=env)  # noqa: E731
    assert run("sites", "add", "RAJ", "--name", "Raj Center", "--organization", "G").returncode == 0
    listed = run("sites", "list")
    assert "RAJ" in listed.stdout
    assert "Raj Center" in listed.stdout
    added = run("users", "add", "ann", "--role", "radiologist", "--site", "RAJ")
    assert added.returncode == 0, added.stdout + added.stderr
    assert run("users", "add", "svc", "--role", "service", "--site", "RAJ", "--no-password")
    token = run("users", "token", "svc", "--days", "30")
    assert token.returncode == 0, token.stderr
    secret = token.stdout.strip()
    assert secret.startswith("dvt_")
    db = Database(settings.effective_database_url)
    try:
        principal = accounts.check_token(db, secret)
        assert principal is not None
        assert principal.role.value == "service"
        assert accounts.check_password(db, "ann", "a long password") is not None
        assert run("users", "disable", "ann").returncode == 0
        assert accounts.check_password(db, "ann", "a long password") is None
        token_id = secret.split("_")[1]
        assert run("users", "token", "svc", "--revoke", token_id).returncode == 0
        assert accounts.check_token(db, secret) is None
    finally:
        db.dispose()
    users = run("users", "list").stdout
    assert "ann" in users
    assert "svc" in users


def test_bad_account_requests_say_why_and_change_nothing(settings: Settings) -> None:
    env = command_env(settings) | {"DICOMVAULT_NEW_PASSWORD": "a long password"}
    run = lambda *args: dicomvault(*args, env=env)  # noqa: E731
    assert run("sites", "add", "A").returncode == 0
    cases = {
        ("sites", "add", "A"): "site A already exists",
        ("sites", "add", "bad code!"): "site code 'bad code!'",
        ("users", "add", "x", "--role", "nurse", "--site", "A"): "unknown role 'nurse'",
        ("users", "add", "x", "--role", "viewer"): "needs a site",
        ("users", "add", "x", "--role", "viewer", "--site", "NOPE"): "no site NOPE",
        ("users", "disable", "ghost"): "no user ghost",
        ("users", "token", "ghost"): "no user ghost",
        ("users", "token", "x", "--revoke", "99"): "no active token 99",
    }
    for args, message in cases.items():
        result = run(*args)
        assert result.returncode != 0, args
        assert message in result.stdout + result.stderr, (args, result.stderr)
    short = dicomvault(
        "users", "add", "x", "--role", "admin", env=env | {"DICOMVAULT_NEW_PASSWORD": "short"}
    )
    assert "at least 8 characters" in short.stderr
    assert "x" not in {u.name for u in _users(settings)}


def _users(settings: Settings) -> list[accounts.UserInfo]:
    db = Database(settings.effective_database_url)
    try:
        return accounts.list_users(db)
    finally:
        db.dispose()


def _serve(data_dir: Path, host: str, **env: str) -> subprocess.Popen[bytes]:
    exe = shutil.which("dicomvault")
    assert exe
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DICOMVAULT_")}
    return subprocess.Popen(
        [
            exe,
            "serve",
            "--data-dir",
            str(data_dir),
            "--host",
            host,
            "--http-port",
            str(env.pop("port")),
            "--no-dicom",  # the DIMSE side has its own tests; 11112 may be taken here
        ],
        env=clean | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_a_public_address_without_logins_refuses_to_start(tmp_path: Path) -> None:
    for extra, reason in [
        ({}, "no one could log in"),
        ({"DICOMVAULT_AUTH_ENABLED": "false"}, "authentication turned off"),
    ]:
        proc = _serve(tmp_path / "data", "0.0.0.0", port=str(free_port()), **extra)  # noqa: S104
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 2, output
        assert b"refusing to listen on 0.0.0.0" in output
        assert reason.encode() in output


def test_a_public_address_with_a_user_starts_and_requires_login(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    env = command_env(settings) | {"DICOMVAULT_NEW_PASSWORD": "a long password"}
    assert dicomvault("users", "add", "root", "--role", "admin", env=env).returncode == 0
    port = free_port()
    proc = _serve(tmp_path / "data", "0.0.0.0", port=str(port))  # noqa: S104
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base, lambda: proc.poll() is None)
        assert httpx.get(f"{base}/dicom-web/studies").status_code == 401
        assert httpx.get(f"{base}/docs").status_code == 404  # no API docs served either
        ok = httpx.get(f"{base}/dicom-web/studies", auth=("root", "a long password"))
        assert ok.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        if proc.stdout:
            proc.stdout.close()
