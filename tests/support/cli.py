"""The real `dicomvault` command in a subprocess, on the archive a test's settings describe."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from dicomvault.config import Settings

__all__ = ["command_env", "dicomvault"]


def command_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `dicomvault` process on the archive `settings` describes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMVAULT_")}
    env["DICOMVAULT_DATA_DIR"] = str(settings.data_dir)
    env["COLUMNS"] = "250"  # one line per problem, however long its path
    optional = {
        "DICOMVAULT_DATABASE_URL": settings.database_url,
        "DICOMVAULT_STORAGE_URL": settings.storage_url,
        "DICOMVAULT_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "DICOMVAULT_S3_ACCESS_KEY_ID": settings.s3_access_key_id,
        "DICOMVAULT_S3_SECRET_ACCESS_KEY": (
            settings.s3_secret_access_key.get_secret_value()
            if settings.s3_secret_access_key
            else None
        ),
        "DICOMVAULT_ENCRYPTION_KEY_FILE": (
            str(settings.encryption_key_file) if settings.encryption_key_file else None
        ),
    }
    env.update({k: v for k, v in optional.items() if v})
    env.update(extra)
    return env


def dicomvault(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("dicomvault")
    assert exe, "the dicomvault console script is not installed (pip install -e .)"
    return subprocess.run(
        [exe, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
