"""The one settings object.

Built once at start-up from, in order of precedence: explicit overrides (command
line flags), `DICOMVAULT_*` environment variables, an optional TOML file named by
`DICOMVAULT_CONFIG_FILE` (or `--config`), and the embedded defaults: SQLite and a
local directory under `./dicomvault-data`, HTTP on 127.0.0.1:8042.

Nothing here is read at import time; callers build `Settings` and pass it down.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["DuplicatePolicy", "Settings", "load_settings"]

CONFIG_FILE_ENV = "DICOMVAULT_CONFIG_FILE"


class DuplicatePolicy(StrEnum):
    """What ingest does when different bytes arrive under a stored SOP Instance UID."""

    REJECT = "reject"
    OVERWRITE = "overwrite"
    KEEP_VERSIONS = "keep-versions"


class Settings(BaseSettings):
    """Every setting of the archive, validated when built."""

    model_config = SettingsConfigDict(
        env_prefix="DICOMVAULT_", extra="forbid", validate_default=True
    )

    data_dir: Path = Field(
        default=Path("dicomvault-data"),
        description="Where the embedded defaults keep the index and objects.",
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    http_port: int = Field(default=8042, ge=0, le=65535, description="HTTP port.")
    database_url: str | None = Field(
        default=None,
        description="sqlite:///path or postgresql://user:pass@host:port/db; "
        "default: SQLite under data_dir.",
    )
    storage_url: str | None = Field(
        default=None,
        description="file:///path, s3://bucket/prefix or memory://; default: data_dir/objects.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="Endpoint of an S3-compatible store (MinIO, Ceph, ...)."
    )
    s3_region: str = Field(default="us-east-1", description="S3 region.")
    s3_access_key_id: str | None = Field(default=None, description="S3 access key id.")
    s3_secret_access_key: SecretStr | None = Field(default=None, description="S3 secret key.")
    duplicate_policy: DuplicatePolicy = Field(
        default=DuplicatePolicy.REJECT,
        description="Different bytes under a stored SOP Instance UID: reject, overwrite "
        "or keep-versions.",
    )
    max_request_bytes: int = Field(
        default=4 * 1024**3, ge=1024, description="Largest request body accepted (413 above)."
    )
    spool_memory_bytes: int = Field(
        default=8 * 1024**2,
        ge=0,
        description="Parts of an upload up to this size stay in memory; larger ones spool "
        "to a temporary file.",
    )
    qido_max_results: int = Field(
        default=1000, ge=1, description="Most results one QIDO-RS response returns."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to call DICOMweb from a browser."
    )
    import_workers: int = Field(default=4, ge=1, le=64, description="Parallel bulk imports.")
    public_url: str | None = Field(
        default=None,
        description="The archive's base URL as clients reach it (e.g. behind a reverse proxy: "
        "https://pacs.example.org); used in RetrieveURL and BulkDataURI. Default: the URL "
        "each request arrived at.",
    )

    dicom_port: int = Field(
        default=11112, ge=0, le=65535, description="DIMSE (DICOM network) port; 0 turns it off."
    )
    ae_title: str = Field(
        default="DICOMVAULT",
        min_length=1,
        max_length=16,
        pattern=r"^[\x20-\x5b\x5d-\x7e]*[^ ][\x20-\x5b\x5d-\x7e]*$",
        description="The archive's DICOM Application Entity title (1-16 characters, no backslash).",
    )

    @field_validator("database_url", "storage_url", "s3_endpoint_url", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(CONFIG_FILE_ENV)
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise ValueError(f"{CONFIG_FILE_ENV}={config_file}: no such file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # The two backend URLs fall back to the data directory; resolved here, once.
    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"

    @property
    def effective_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "objects").resolve().as_uri()

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain values, secrets and passwords masked."""
        values = self.model_dump(mode="json")
        values["database_url"] = self.effective_database_url
        values["storage_url"] = self.effective_storage_url
        for key in _URL_SETTINGS:
            if values[key] is not None:
                values[key] = _mask_url(values[key])
        for key, value in list(values.items()):
            if isinstance(getattr(self, key), SecretStr) and value is not None:
                values[key] = "**********"
        return values


_URL_SETTINGS = ("database_url", "storage_url", "s3_endpoint_url")
_MASK = "***"
# Query parameters that carry credentials (libpq takes `?password=`, S3 URLs can sign).
_SECRET_PARAM = re.compile(r"password|passwd|secret|token|signature|credential", re.IGNORECASE)


def _mask_url(url: str) -> str:
    """`url` with the password of its user info and any credential parameter masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{_MASK}@{host}" if has_password else netloc
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    masked = [(name, _MASK if _SECRET_PARAM.search(name) else value) for name, value in pairs]
    if netloc == parts.netloc and masked == pairs:
        return url  # as given: re-assembling could change it (sqlite:/// loses a slash)
    query = f"?{urlencode(masked, safe='*')}" if parts.query else ""
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}{fragment}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; `overrides` (command-line flags) win over everything else."""
    if config_file is not None:
        os.environ[CONFIG_FILE_ENV] = str(config_file)
    clean = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**clean)
